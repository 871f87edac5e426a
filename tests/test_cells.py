"""Cells from membrane probabilities, on synthetic sections whose cells are known."""

import numpy as np
import pytest
from conftest import touching_blobs

from scripts.cells import CELL_METHODS, CellLabeller, label_cell_stack, label_cells
from scripts.datalists import membrane_from_instances
from scripts.errors import InputError
from scripts.metrics import object_matching


def grid_section(cells_per_side: int = 3, cell: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Square cells separated by 1-pixel membrane lines, the outer ones touching the image edge:
    (membrane probability, expected cell ids)."""
    size = cells_per_side * (cell + 1) - 1
    membrane = np.zeros((size, size), dtype=np.float32)
    membrane[cell :: cell + 1, :] = membrane[:, cell :: cell + 1] = 1.0
    expected = np.zeros((size, size), dtype=np.int32)
    for row in range(cells_per_side):
        for column in range(cells_per_side):
            top, left = row * (cell + 1), column * (cell + 1)
            expected[top : top + cell, left : left + cell] = row * cells_per_side + column + 1
    return membrane, expected


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the ids (0 stays 0)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b)) and ((a == 0) == (b == 0)).all()


@pytest.mark.parametrize("method", CELL_METHODS)
def test_a_synthetic_section_with_known_cells_comes_back_exactly(method):
    membrane, expected = grid_section()
    cells = label_cells(membrane, membrane_threshold=0.5, method=method)
    assert cells.max() == 9 and same_partition(cells, expected)


@pytest.mark.parametrize("method", CELL_METHODS)
def test_noisy_probabilities_of_known_cells_come_back_exactly(method):
    membrane, expected = grid_section(cells_per_side=4, cell=12)
    noisy = np.clip(membrane * 0.8 + np.random.default_rng(0).uniform(0.0, 0.2, membrane.shape), 0, 1)
    cells = label_cells(noisy, membrane_threshold=0.5, method=method)
    assert same_partition(cells, expected)


def test_thick_membranes_are_given_to_the_cells_up_to_one_pixel_lines():
    membrane = np.zeros((9, 13), dtype=np.float32)
    membrane[:, 5:8] = 0.9  # a 3-pixel membrane between two cells
    cells = label_cells(membrane, membrane_threshold=0.5)
    assert cells.max() == 2 and (cells[:, 6] == 0).all() and (cells[:, :6] == 1).all() and (cells[:, 7:] == 2).all()


def test_ids_are_unique_across_sections_and_the_stack_is_uint32():
    membrane, _ = grid_section()
    cells = label_cell_stack(np.stack([membrane, membrane, np.zeros_like(membrane)]), membrane_threshold=0.5)
    assert cells.dtype == np.uint32
    assert [sorted(set(np.unique(s)) - {0}) for s in cells] == [list(range(1, 10)), list(range(10, 19)), [19]]


@pytest.mark.parametrize("method", CELL_METHODS)
def test_a_section_with_no_membrane_is_one_cell_and_one_with_no_interior_has_none(method):
    assert (label_cells(np.zeros((8, 8)), 0.5, method=method) == 1).all()
    assert (label_cells(np.zeros((40, 40)), 0.5, method=method) == 1).all()  # long-range offsets fit here
    assert (label_cells(np.ones((8, 8)), 0.5, method=method) == 0).all()


def test_more_than_65535_cells_keep_their_own_ids():
    membrane, _ = grid_section(cells_per_side=100, cell=2)  # 10,000 cells per section
    cells = label_cell_stack(np.stack([membrane] * 7), membrane_threshold=0.5)
    assert cells.max() == 70_000 and len(np.unique(cells)) == 70_001


def test_small_fragments_merge_into_their_neighbours():
    membrane = np.zeros((12, 13), dtype=np.float32)
    membrane[:, 6] = 1.0  # two cells
    membrane[3, 0:4] = membrane[0:4, 3] = 1.0  # and a 3x3 fragment walled off in the corner of the left one
    assert label_cells(membrane, 0.5).max() == 3
    merged = label_cells(membrane, 0.5, min_size=10)
    assert merged.max() == 2 and merged[1, 1] == merged[8, 2] != merged[5, 10]


def test_the_distance_watershed_splits_cells_joined_through_a_gap():
    membrane = np.ones((40, 70), dtype=np.float32)
    yy, xx = np.mgrid[:40, :70]
    for centre in (18, 51):
        membrane[(yy - 20) ** 2 + (xx - centre) ** 2 < 15**2] = 0.0
    membrane[20, 30:40] = 0.0  # a 1-pixel gap in the membrane between the two cells
    assert label_cells(membrane, 0.5, method="components").max() == 1
    split = label_cells(membrane, 0.5, method="watershed", seed_depth=3)
    assert split.max() == 2 and split[20, 18] != split[20, 51]
    # agglomeration starts from the same fragments and keeps them apart across the strong membrane around the gap
    agglomerated = label_cells(membrane, 0.5, method="agglomeration", seed_depth=3, merge_threshold=0.5)
    assert agglomerated.max() == 2 and agglomerated[20, 18] != agglomerated[20, 51]
    for method in ("multicut", "gasp"):  # their superpixels split at the gap; the membrane around it keeps them cut
        partitioned = label_cells(membrane, 0.5, method=method)
        assert partitioned.max() == 2 and partitioned[20, 18] != partitioned[20, 51], method


@pytest.mark.parametrize("method", ["multicut", "gasp"])
def test_the_documented_graph_partition_override_labels_a_section(method):
    """docs/cells.md's command line, as the configs build it."""
    membrane, expected = grid_section(cells_per_side=4, cell=12)
    labeller = CellLabeller(method, membrane_threshold=0.4, sigma_seeds=3, boundary_bias=0.1, min_size=64)
    assert same_partition(labeller(membrane), expected)


@pytest.mark.parametrize("method", ["multicut", "gasp"])
def test_graph_partitions_join_across_weak_boundaries_as_the_bias_says(method):
    """Superpixels split at a faint line (0.3) and a real membrane (0.9): the boundary bias 0.5 joins across the
    faint line only (its cost log(0.7 / 0.3) > 0), 0.8 cuts it too (log(0.7 / 0.3) + log(0.2 / 0.8) < 0)."""
    membrane = np.zeros((30, 61), dtype=np.float32)
    membrane[:, 20] = 0.3
    membrane[:, 40] = 0.9
    joined = label_cells(membrane, 0.2, method=method, boundary_bias=0.5)
    cut = label_cells(membrane, 0.2, method=method, boundary_bias=0.8)
    assert joined.max() == 2 and joined[5, 5] == joined[5, 30] != joined[5, 50]
    assert cut.max() == 3 and len({cut[5, 5], cut[5, 30], cut[5, 50]}) == 3


def test_agglomeration_merges_fragments_across_weak_boundaries_only():
    membrane = np.zeros((30, 61), dtype=np.float32)
    membrane[:, 20] = 0.3  # a faint line: the two left fragments are one cell
    membrane[:, 40] = 0.9  # a real membrane
    fragments = label_cells(membrane, 0.5, method="watershed")  # the faint line is below the threshold
    assert fragments.max() == 2
    oversplit = label_cells(membrane, 0.2, method="agglomeration", merge_threshold=0.1)
    merged = label_cells(membrane, 0.2, method="agglomeration", merge_threshold=0.5)
    assert oversplit.max() == 3 and merged.max() == 2 and merged[5, 5] == merged[5, 30] != merged[5, 50]


def test_the_mutex_watershed_separates_cells_its_long_range_repulsion_spans():
    membrane = np.zeros((30, 61), dtype=np.float32)
    membrane[:, 30] = 0.6  # below the threshold: one component for "components"
    assert label_cells(membrane, 0.7).max() == 1
    # across the line, attraction 1 - 0.6 = 0.4 against repulsion 0.4 - bias: repulsion wins where bias > 0.8
    weak = label_cells(membrane, 0.7, method="mutex_watershed", long_range=5, repulsion_bias=0.2)
    strong = label_cells(membrane, 0.7, method="mutex_watershed", long_range=5, repulsion_bias=0.9)
    assert weak.max() == 1
    left, right = strong[:, :28], strong[:, 33:]  # (the line itself, repelled from both sides, is cut in pieces)
    assert len(np.unique(left)) == len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]


OFFSETS = [[-1, 0], [0, -1], [-9, 0], [0, -9]]


def _affinities(labels: np.ndarray) -> np.ndarray:
    """The true affinities of ``labels`` (0 = membrane, each pixel its own) to OFFSETS, 0 off the image."""
    from bioimage_cpp.affinities import compute_affinities

    ids = labels.astype(np.int64) + 1
    ids[labels == 0] = ids.max() + 1 + np.arange((labels == 0).sum())
    return compute_affinities(ids, OFFSETS, return_mask=False)


def test_learned_affinities_recover_a_synthetic_section():
    membrane, expected = grid_section()
    evidence = np.concatenate([membrane[None], _affinities(expected)])
    cells = label_cells(evidence, membrane_threshold=0.5, method="mutex_watershed", affinity_offsets=OFFSETS)
    assert same_partition(cells, expected)
    for method in ("components", "gasp"):  # the other methods use the membrane alone
        from_evidence = label_cells(evidence, 0.5, method, affinity_offsets=OFFSETS)
        assert same_partition(from_evidence, label_cells(membrane, 0.5, method))


def test_learned_long_range_repulsion_splits_cells_whose_membrane_has_a_gap():
    """Two cells whose membrane (and nearest affinities) open a gap: the components merge them, the mutex
    watershed on the network's long-range affinities, which still see two cells, does not."""
    truth = np.ones((40, 40), np.int32)
    truth[:, 21:] = 2
    truth[:, 20] = 0
    gapped = truth.copy()
    gapped[17:23, 20] = 1  # the map lost the membrane here
    membrane = (gapped == 0).astype(np.float32)
    affinities = _affinities(gapped)
    affinities[2:] = _affinities(truth)[2:]  # the long-range offsets saw the two cells
    evidence = np.concatenate([membrane[None], affinities])
    assert label_cells(membrane, 0.5, "components").max() == 1
    cells = label_cells(evidence, 0.5, "mutex_watershed", repulsion_bias=0.5, affinity_offsets=OFFSETS)
    assert cells.max() == 2 and len(np.unique(cells[:, :15])) == 1 and len(np.unique(cells[:, 26:])) == 1
    assert cells[0, 0] != cells[0, 39]
    with pytest.raises(ValueError, match=r"with n affinity_offsets, .*; got shape \(5, 40, 40\) with 3"):
        label_cells(evidence, 0.5, "mutex_watershed", affinity_offsets=OFFSETS[:3])


def test_lifted_multicut_on_true_affinities_recovers_a_synthetic_section():
    membrane, expected = grid_section()
    evidence = np.concatenate([membrane[None], _affinities(expected)])
    cells = label_cells(evidence, 0.5, "lifted_multicut", boundary_bias=0.3, affinity_offsets=OFFSETS)
    assert same_partition(cells, expected)


def test_lifted_edges_keep_far_superpixels_that_the_network_sees_apart_apart():
    """Three stripes behind faint lines: the multicut joins them all; a long-range affinity of 0 between the
    outer two makes the lifted multicut cut between them."""
    membrane = np.zeros((40, 38), np.float32)
    membrane[:, [12, 25]] = 0.45  # faint lines: superpixels at threshold 0.4, joined at bias 0.4
    offsets = [[-1, 0], [0, -1], [0, -27]]
    affinities = np.ones((3, 40, 38), np.float32)
    affinities[2, :, 26:] = 0.0  # from the right stripe to the left one, 27 px away: different cells
    evidence = np.concatenate([membrane[None], affinities])
    options = {"membrane_threshold": 0.4, "boundary_bias": 0.4, "affinity_offsets": offsets}
    assert label_cells(evidence, method="multicut", **options).max() == 1
    lifted = label_cells(evidence, method="lifted_multicut", **options)
    assert lifted[20, 5] != lifted[20, 32] and lifted.max() >= 2


def test_the_cell_labeller_holds_a_method_and_its_parameters():
    membrane, expected = grid_section()
    labeller = CellLabeller("watershed", membrane_threshold=0.5, seed_depth=2.0, min_size=4)
    assert same_partition(labeller(membrane), expected)
    assert labeller.stack(np.stack([membrane] * 2)).max() == 18
    assert "watershed" in repr(labeller)
    with pytest.raises(InputError, match=r"--cells#method: 'magic' is not one of components, watershed"):
        CellLabeller("magic")
    with pytest.raises(InputError, match="cells: .*seed_dept"):
        CellLabeller("watershed", seed_dept=2.0)
    for bias in (1, 2):
        with pytest.raises(InputError, match=f"--cells#boundary_bias: {bias:.1f} must lie strictly between 0 and 1"):
            CellLabeller("multicut", boundary_bias=bias)
    with pytest.raises(InputError, match="--cells#sigma_seeds"):
        CellLabeller("gasp", sigma_seeds=-1)


@pytest.mark.parametrize("method", ["components", "gasp"])
def test_objects_on_a_background_come_back_with_the_background_left_at_0(method):
    _, ids = touching_blobs(sections=2)
    for section in ids:
        evidence = np.stack([membrane_from_instances(section), section > 0]).astype(np.float32)
        cells = label_cells(evidence, method=method, boundary_bias=0.2, objects_on_background=True)  # as shipped
        assert (cells[section == 0] == 0).all()
        assert object_matching(section, cells)["f1"] == 1.0
        tiled = label_cells(evidence[0], method=method, boundary_bias=0.2)  # without the foreground: no background
        assert (tiled[section == 0] > 0).mean() > 0.9


def test_objects_on_a_background_take_a_foreground_and_no_affinities():
    section = np.zeros((2, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"\(2, H, W\) with the foreground"):
        label_cells(section[:1], objects_on_background=True)
    with pytest.raises(
        InputError,
        match=r"--objects_on_background true: needs a network with a foreground output \(configs/objects.json\)",
    ):
        CellLabeller(objects_on_background=True, affinity_offsets=[[-1, 0], [0, -1]])
    with pytest.raises(InputError, match="objects_on_background"):
        CellLabeller(objects_on_background="maybe")
    assert CellLabeller(objects_on_background="true").options["objects_on_background"] is True
    assert CellLabeller(objects_on_background="false").options["objects_on_background"] is False


@pytest.mark.parametrize(
    ("probability", "message"),
    [(np.full((4, 4), np.nan), "NaN"), (np.zeros((2, 4, 4)), r"\(H, W\)")],
)
def test_bad_probabilities_are_rejected(probability, message):
    with pytest.raises(ValueError, match=message):
        label_cells(probability, 0.5)
    with pytest.raises(ValueError, match="method"):
        label_cells(np.zeros((4, 4)), 0.5, method="magic")
    with pytest.raises(ValueError, match="boundary_bias"):
        label_cells(np.zeros((4, 4)), 0.5, method="multicut", boundary_bias=1.0)
