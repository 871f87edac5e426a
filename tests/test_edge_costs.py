"""Learned edge costs: features and labels of superpixel edges, and the classifier that costs them."""

import json

import numpy as np
import pytest
from test_cells import grid_section, same_partition

from scripts.cells import CellLabeller, _superpixels, label_cells
from scripts.edge_costs import NUM_FEATURES, EdgeClassifier, edge_features, edge_labels
from scripts.errors import InputError


def _graph(superpixels):
    from elf.segmentation.features import compute_rag

    return compute_rag(superpixels, n_threads=1)


def _noisy_grid(seed: int) -> tuple[np.ndarray, np.ndarray]:
    membrane, expected = grid_section(cells_per_side=4, cell=16)
    noise = np.random.default_rng(seed).uniform(0.0, 0.3, membrane.shape)
    return np.clip(membrane * 0.7 + noise, 0, 1).astype(np.float32), expected


def _learned(seeds=(1, 2)) -> EdgeClassifier:
    features, labels = [], []
    for seed in seeds:
        probability, expected = _noisy_grid(seed)
        superpixels = _superpixels(probability, 0.5, 1.0)
        graph = _graph(superpixels)
        edge_label, usable = edge_labels(graph, superpixels, expected == 0)
        features.append(edge_features(graph, superpixels, probability)[usable])
        labels.append(edge_label[usable])
    return EdgeClassifier.fit(np.concatenate(features), np.concatenate(labels))


def test_each_edge_has_every_feature_and_finite_values():
    probability, _ = _noisy_grid(0)
    superpixels = _superpixels(probability, 0.5, 1.0)
    graph = _graph(superpixels)
    features = edge_features(graph, superpixels, probability)
    assert features.shape == (graph.number_of_edges, NUM_FEATURES) and np.isfinite(features).all()


def test_edges_inside_a_true_cell_are_labelled_0_and_between_cells_1():
    superpixels = np.zeros((8, 12), dtype=np.int64)
    superpixels[:, 3:6], superpixels[:, 6:9], superpixels[:, 9:] = 1, 2, 3  # two superpixels per true cell
    membrane_truth = np.zeros((8, 12), dtype=np.uint8)
    membrane_truth[:, 6] = 1  # true cells: columns 0-5 and 7-11
    graph = _graph(superpixels)
    labels, usable = edge_labels(graph, superpixels, membrane_truth)
    by_pair = {tuple(uv): int(label) for uv, label in zip(graph.uv_ids().tolist(), labels, strict=True)}
    assert by_pair == {(0, 1): 0, (1, 2): 1, (2, 3): 0} and usable.all()


def test_a_classifier_learned_on_synthetic_sections_recovers_another_exactly():
    classifier = _learned()
    probability, expected = _noisy_grid(3)
    for method in ("multicut", "gasp"):
        cells = label_cells(probability, 0.5, method, sigma_seeds=1.0, boundary_bias=0.5, edge_classifier=classifier)
        assert same_partition(cells, expected), method


def test_the_partition_follows_the_classifier_not_the_mean_evidence():
    probability, _ = _noisy_grid(3)
    zeros = np.zeros(NUM_FEATURES)
    cut_all, join_all = (EdgeClassifier(zeros, np.ones(NUM_FEATURES), zeros, bias) for bias in (20.0, -20.0))
    superpixels = _superpixels(probability, 0.5, 1.0)
    options = {"membrane_threshold": 0.5, "method": "multicut", "sigma_seeds": 1.0}
    assert label_cells(probability, edge_classifier=join_all, **options).max() == 1
    assert label_cells(probability, edge_classifier=cut_all, **options).max() == len(np.unique(superpixels))


def test_a_saved_classifier_reads_back_with_the_same_costs(tmp_path):
    classifier = _learned()
    classifier.save(tmp_path / "edge_classifier.json")
    again = EdgeClassifier.load(tmp_path / "edge_classifier.json")
    features = np.random.default_rng(0).normal(size=(5, NUM_FEATURES))
    np.testing.assert_array_equal(again(features), classifier(features))
    labeller = CellLabeller("gasp", 0.5, sigma_seeds=1.0, edge_classifier=str(tmp_path / "edge_classifier.json"))
    probability, _ = _noisy_grid(3)
    expected = label_cells(probability, 0.5, "gasp", sigma_seeds=1.0, edge_classifier=classifier)
    np.testing.assert_array_equal(labeller(probability), expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        ("{not json", "cannot read the edge classifier"),
        (json.dumps({"kind": "random_forest"}), "not an edge classifier for these features"),
        (json.dumps([1, 2]), "cannot read the edge classifier"),
    ],
)
def test_a_missing_or_foreign_classifier_file_stops_with_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "edge_classifier.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=f"{path}: .*{message}"):
        CellLabeller("multicut", 0.5, edge_classifier=str(path))


def test_a_classifier_file_with_the_wrong_number_of_features_is_refused(tmp_path):
    _learned().save(tmp_path / "edge_classifier.json")
    document = json.loads((tmp_path / "edge_classifier.json").read_text())
    document["coefficients"] = document["coefficients"][:-1]
    (tmp_path / "edge_classifier.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=f"needs {NUM_FEATURES} means"):
        EdgeClassifier.load(tmp_path / "edge_classifier.json")


def test_only_graph_partitions_take_an_edge_classifier(tmp_path):
    _learned().save(tmp_path / "edge_classifier.json")
    with pytest.raises(InputError, match="--cells#edge_classifier: method 'components' has no edges"):
        CellLabeller("components", 0.5, edge_classifier=str(tmp_path / "edge_classifier.json"))
    assert "edge_classifier" not in CellLabeller("multicut", 0.5, edge_classifier=None).options
