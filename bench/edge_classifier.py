"""Learned edge costs for multicut and GASP, learned and chosen on the out-of-fold maps of sections 0-23.

The maps are ``bench/nested_folds.py``'s: each section of 0-23 predicted by an inner fold's model that did not
train on it, so they look like the maps the network makes of new sections. For each superpixel setting of
``SUPERPIXELS`` (membrane threshold, ``sigma_seeds``):

1. leave one block out: for each block of 6 sections, an edge classifier (``scripts.edge_costs``) learned on the
   other three blocks' edges costs that block's edges, so no section is costed by a classifier that saw it;
2. every combination of method (``multicut``, ``gasp``), ``boundary_bias`` and ``min_size`` is scored on all 24
   sections with those costs (cell V_rand and V_info, as ``run evaluating`` scores them).

The best mean V_rand is chosen; ``validation_leave_one_out`` repeats the choice without each block and scores
that block (as ``bench/cell_methods.py``). The classifier of the chosen setting is then learned on all 24
sections and written to ``--classifier``, and the test block 24-29, predicted by fold 4's model
(``--model_path``), is scored once with it.

    python bench/edge_classifier.py --oof_maps docs/results/nested_folds/oof_maps.npz
        [--classifier bundle/models/edge_classifier.json] [--output docs/results/edge_classifier.json]

About 11 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from cell_methods import (  # noqa: E402
    BUNDLE,
    SCORES,
    combinations,
    leave_one_out,
    ms_per_section,
    out_of_fold,
    predict,
)

from scripts.cells import _superpixels, label_cells  # noqa: E402
from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402
from scripts.edge_costs import EdgeClassifier, edge_features, edge_labels  # noqa: E402
from scripts.metrics import cell_scores  # noqa: E402

# around the superpixels the mean-cost multicut chose on the same maps (bench/cell_methods.py --oof_maps: 0.6, 2)
SUPERPIXELS = {"membrane_threshold": [0.5, 0.6], "sigma_seeds": [2.0, 3.0]}
PARTITION = {"method": ["multicut", "gasp"], "boundary_bias": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "min_size": [64, 128]}


def learning_data(maps: list[np.ndarray], items: list[dict], setting: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each section's (features, labels) of its usable edges, for the superpixels of ``setting``."""
    from elf.segmentation.features import compute_rag

    data = []
    for probability, item in zip(maps, items, strict=True):
        superpixels = _superpixels(probability, setting["membrane_threshold"], setting["sigma_seeds"])
        graph = compute_rag(superpixels, n_threads=1)
        labels, usable = edge_labels(graph, superpixels, item["label"])
        data.append((edge_features(graph, superpixels, probability)[usable], labels[usable]))
    return data


def learn(data: list[tuple[np.ndarray, np.ndarray]], about: dict) -> EdgeClassifier:
    features, labels = (np.concatenate(part) for part in zip(*data, strict=True))
    return EdgeClassifier.fit(features, labels, about={**about, "edges": len(labels)})


def edge_auc(classifiers: dict[int, EdgeClassifier], data: list, blocks: list[int]) -> float:
    """The area under the ROC curve of each section's edges under its block's classifier (out of fold)."""
    from sklearn.metrics import roc_auc_score

    scores = [classifiers[block](features) for (features, _), block in zip(data, blocks, strict=True)]
    return float(roc_auc_score(np.concatenate([labels for _, labels in data]), np.concatenate(scores)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oof_maps", type=Path, required=True)
    parser.add_argument(
        "--model_path", type=Path, default=BUNDLE / "models" / "fold4" / "model.pt", help="fold 4's model"
    )
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--classifier", type=Path, default=BUNDLE / "models" / "edge_classifier.json")
    parser.add_argument("--output", type=Path, default=Path("docs/results/edge_classifier.json"))
    args = parser.parse_args()
    description = machine.describe()
    items = load_labelled_stack(args.dataset_dir / "train-volume.tif", args.dataset_dir / "train-labels.tif")
    validation, maps, blocks = out_of_fold(args.oof_maps, items, 5)

    rows, aucs, learned_from = [], {}, {}
    for setting in combinations(SUPERPIXELS):
        started = time.perf_counter()
        data = learned_from[str(setting)] = learning_data(maps, validation, setting)
        classifiers = {
            block: learn([d for d, b in zip(data, blocks, strict=True) if b != block], {"blocks_left_out": [block]})
            for block in sorted(set(blocks))
        }
        aucs[str(setting)] = edge_auc(classifiers, data, blocks)
        for partition in combinations(PARTITION):
            options = {**setting, **partition}
            scores = [
                cell_scores(label_cells(p, edge_classifier=classifiers[block], **options), item["label"])
                for p, item, block in zip(maps, validation, blocks, strict=True)
            ]
            rows.append({"options": options, "scores": scores})
        print(f"{setting}: out-of-fold edge AUC {aucs[str(setting)]:.4f}, {time.perf_counter() - started:.0f} s")

    v_rand = np.array([[s["v_rand"] for s in row["scores"]] for row in rows])
    v_info = np.array([[s["v_info"] for s in row["scores"]] for row in rows])
    best = int(np.lexsort((v_info.mean(axis=1), v_rand.mean(axis=1)))[-1])
    chosen = rows[best]["options"]
    setting = {key: chosen[key] for key in SUPERPIXELS}
    classifier = learn(
        learned_from[str(setting)],
        {"learned_on": "out-of-fold maps of sections 0-23 (bench/nested_folds.py)", "superpixels": setting},
    )
    classifier.save(args.classifier)

    test = split_sections(items, 4, 5)["test"]
    network_ms: list[float] = []
    test_maps = predict(test, args.model_path, network_ms)
    test_scores = [
        cell_scores(label_cells(p, edge_classifier=classifier, **chosen), item["label"])
        for p, item in zip(test_maps, test, strict=True)
    ]
    partition_options = {key: value for key, value in chosen.items() if key != "method"}
    partition_options["edge_classifier"] = classifier
    result = {
        "validation_slices": [item["slice"] for item in validation],
        "test_slices": [item["slice"] for item in test],
        "chosen": chosen,
        "classifier": str(args.classifier),
        "out_of_fold_edge_auc": aucs,
        "validation": {key: float(np.mean([s[key] for s in rows[best]["scores"]])) for key in SCORES},
        "validation_leave_one_out": leave_one_out(v_rand, v_info, blocks),
        "test": {key: float(np.mean([s[key] for s in test_scores])) for key in SCORES},
        "test_per_section": [{"slice": item["slice"], **s} for item, s in zip(test, test_scores, strict=True)],
        "network_ms_per_section": network_ms[0],
        "ms_per_section": ms_per_section(chosen["method"], partition_options, test_maps),
        "cpu": f"{description['cpu']}, {description['torch_threads']} torch threads, flags: {description['cpu_flags']}",
        "grid": [
            {**row["options"], "v_rand": float(r.mean()), "v_info": float(i.mean())}
            for row, r, i in zip(rows, v_rand, v_info, strict=True)
        ],
        "machine": description,
    }
    machine.write_json(args.output, result)
    v, loo, t = result["validation"], result["validation_leave_one_out"], result["test"]
    print(
        f"chose {chosen}: 0-23 V_rand {v['v_rand']:.4f} / V_info {v['v_info']:.4f} (leave one block out "
        f"{loo['v_rand']:.4f} / {loo['v_info']:.4f}); test 24-29 {t['v_rand']:.4f} / {t['v_info']:.4f}; "
        f"{result['ms_per_section']:.0f} ms per section (network {network_ms[0]:.0f} ms)"
    )


if __name__ == "__main__":
    main()
