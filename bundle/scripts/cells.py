"""Cells: instance label maps from the membrane probability, and a table of their properties.

A cell is a region of cell interior enclosed by membrane, 4-connected as in the ISBI 2012 metric. Each
section is segmented in 2D by one of :data:`CELL_METHODS` (:class:`CellLabeller` holds the choice and its
parameters):

* ``"components"``: the connected components of the interior ``p < membrane_threshold``, grown over the
  membrane by a watershed of the binary map until they meet on 1-pixel lines (the "border thinning" the ISBI
  scorer applies, so the cell map is the partition the challenge scores at that threshold).
* ``"watershed"``: a watershed of the membrane probability seeded with the h-maxima of the interior's distance
  transform (the idea of elf's distance-transform watershed, with scikit-image): a cell joined to its neighbour
  through a gap in the membrane gets two seeds when the gap's half-width is at least ``seed_depth`` pixels below
  both centres.
* ``"mutex_watershed"``: the mutex watershed (``mwatershed``) on affinities read off the probability:
  nearest neighbours attract with ``1 - max(p)`` of the pair; pairs ``long_range`` pixels apart repel with the
  strongest membrane on the straight path between them, offset by ``repulsion_bias`` (higher = more cells). For a
  network that predicts affinities (``configs/affinities.json``), its own affinities instead: the nearest
  offsets attract with their affinity, the longer ones repel with it minus ``repulsion_bias`` (Wolf et al.,
  ECCV 2018); the other methods use the membrane derived from them.
* ``"agglomeration"``: the ``"watershed"`` fragments, merged greedily while the mean membrane probability on
  the boundary between two neighbours (the higher of each pixel pair across it) is below ``merge_threshold``
  (scikit-image's hierarchical merging of the boundary region adjacency graph).
* ``"multicut"`` and ``"gasp"``: graph partitions of superpixels (Beier et al., Nature Methods 2017; Bailoni et
  al., CVPR 2022), with python-elf on bioimage-cpp. The superpixels are elf's distance-transform watershed of the
  probability (interior ``p <= membrane_threshold``; seeds at the maxima of its distance transform smoothed by
  ``sigma_seeds``; superpixels under 25 pixels join a neighbour first, so ``min_size`` below 25 changes nothing
  for these two). Each pair of
  neighbouring superpixels gets the mean boundary evidence ``b`` of their shared border (as ``"agglomeration"``'s:
  a 1-pixel membrane lies on one side only) and the cost ``log((1 - b) / b) + log((1 - boundary_bias) /
  boundary_bias)`` (elf's, with ``b`` kept within [0.001, 0.999]): positive joins, negative separates, and a
  higher ``boundary_bias`` gives more cells. ``"multicut"`` weights each cost by the border's length (relative to
  the longest) and solves the multicut (greedy additive edge contraction, then Kernighan-Lin); ``"gasp"`` merges
  by the border-length-weighted average cost between clusters while it stays positive.
  With an ``edge_classifier`` (:mod:`scripts.edge_costs`), ``b`` is instead the classifier's probability that
  the border separates two cells, from statistics of the border over filtered versions of the probability.
* ``"lifted_multicut"``: the ``"multicut"``, plus lifted edges for a network that predicts affinities (Keuper
  et al., ICCV 2015; Beier et al. 2017): two superpixels that are not neighbours but that a long-range offset
  links get the cost of their mean affinity ``a`` (as above with ``b = 1 - a``), so far pixels the network sees
  in different cells stay apart; solved by greedy additive edge contraction then Kernighan-Lin. Without
  affinities it is the ``"multicut"``.

Objects on a background (``objects_on_background``, for a network of ``configs/objects.json`` that also
predicts the foreground): the membrane channel then covers the background as well as the lines between touching
objects, and each method runs as above on it; pixels of foreground probability below 0.5 then go back to 0,
and each object keeps its largest piece, so the background stays background.

Every method ends the same way: the interior pixels of each segment (``p < membrane_threshold``) are its
seed, seeds smaller than ``min_size`` pixels are dropped, and a watershed floods the membrane from the kept
seeds until they meet on 1-pixel lines (on the binary map for ``"components"``, as the scorer does; on the
probability otherwise). So small fragments merge into their neighbours, and a segment with no interior pixel
is not a cell.

Label maps are (Z, H, W) uint32, 0 = membrane line / background, ids 1..N unique across the stack. Their table
of properties is :mod:`scripts.cell_table`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt, generate_binary_structure, maximum_filter
from skimage.measure import label as connected_components
from skimage.morphology import h_maxima, remove_small_objects
from skimage.segmentation import watershed

from .edge_costs import EdgeClassifier, edge_features
from .errors import InputError
from .flags import flag, number
from .metrics import thinned_segmentation

__all__ = ["CELL_METHODS", "CellLabeller", "label_cells", "label_cell_stack"]

CELL_METHODS = ("components", "watershed", "mutex_watershed", "agglomeration", "multicut", "gasp", "lifted_multicut")
#: the methods that partition a graph of superpixels, and so take an edge classifier
PARTITION_METHODS = ("multicut", "gasp", "lifted_multicut")


def _distance_seeds(interior: np.ndarray, seed_depth: float) -> np.ndarray:
    """The interior split at the h-maxima of its distance transform (a region without one stays whole)."""
    distance = distance_transform_edt(interior)
    regions = connected_components(interior, connectivity=1)
    markers = connected_components(h_maxima(distance, seed_depth).astype(bool) & interior, connectivity=2)
    seeded = np.zeros(regions.max() + 1, dtype=bool)
    seeded[regions[markers > 0]] = True
    unseeded = ~seeded[regions] & (regions > 0)
    markers[unseeded] = regions[unseeded] + markers.max()
    return watershed(-distance, markers, mask=interior)


def _path_maximum(probability: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """At each pixel x, the highest probability on the straight path from x to x + offset (NaN: off the image)."""
    steps = max(abs(offset[0]), abs(offset[1]))
    height, width = probability.shape
    padded = np.full((height + 2 * steps, width + 2 * steps), np.nan, dtype=np.float64)
    padded[steps : steps + height, steps : steps + width] = probability
    result = probability.astype(np.float64)
    for step in range(1, steps + 1):
        dy, dx = round(step * offset[0] / steps), round(step * offset[1] / steps)
        result = np.maximum(result, padded[steps + dy : steps + dy + height, steps + dx : steps + dx + width])
    return result


def _mutex_watershed(probability: np.ndarray, long_range: int, repulsion_bias: float) -> np.ndarray:
    import mwatershed

    offsets = [(1, 0), (0, 1)]
    if long_range < min(probability.shape):  # mwatershed needs every offset inside the image
        offsets += [(long_range, 0), (0, long_range), (long_range, long_range), (long_range, -long_range)]
    affinities = np.stack([1.0 - _path_maximum(probability, offset) for offset in offsets])
    affinities[2:] -= repulsion_bias  # long-range pairs across a membrane become repulsive
    affinities = np.nan_to_num(affinities, nan=0.0)  # pairs that leave the image: no evidence
    return mwatershed.agglom(affinities, [list(offset) for offset in offsets]).astype(np.int64)


def _learned_mutex_watershed(affinities: np.ndarray, offsets: np.ndarray, repulsion_bias: float) -> np.ndarray:
    import mwatershed

    nearest = np.abs(offsets).sum(1) == 1
    inside = np.abs(offsets).max(1) < min(affinities.shape[1:])  # mwatershed needs every offset inside the image
    weights = np.where(nearest[:, None, None], affinities, affinities - repulsion_bias)[inside]
    return mwatershed.agglom(weights.astype(np.float64), offsets[inside].tolist()).astype(np.int64)


def _weight_boundary(graph, source, target, neighbour) -> dict:
    """Mean boundary probability of the merged node's boundary with ``neighbour`` (scikit-image's recipe)."""
    default = {"weight": 0.0, "count": 0}
    first, second = graph[source].get(neighbour, default), graph[target].get(neighbour, default)
    count = first["count"] + second["count"]
    return {"count": count, "weight": (first["count"] * first["weight"] + second["count"] * second["weight"]) / count}


def _agglomerate(fragments: np.ndarray, probability: np.ndarray, merge_threshold: float) -> np.ndarray:
    from skimage.graph import merge_hierarchical, rag_boundary  # networkx: a quarter second to import, used here only

    if len(np.unique(fragments)) < 2:
        return fragments
    # the boundary evidence of a pixel pair is its higher probability, as a 1-pixel membrane is on one side only
    evidence = maximum_filter(probability.astype(np.float64), footprint=generate_binary_structure(2, 1))
    graph = rag_boundary(fragments, evidence, connectivity=1)
    return merge_hierarchical(
        fragments, graph, thresh=merge_threshold, rag_copy=False, in_place_merge=True,
        merge_func=lambda *_: None, weight_func=_weight_boundary,
    )  # fmt: skip


def _superpixels(probability: np.ndarray, membrane_threshold: float, sigma_seeds: float) -> np.ndarray:
    """(H, W) int64 superpixels of the (H, W) probability: elf's distance-transform watershed, split wherever a cell
    could be (membrane above ``membrane_threshold``; seeds at the maxima of the distance transform smoothed by
    ``sigma_seeds``; elf's height map)."""
    from elf.segmentation.watershed import distance_transform_watershed

    # 25 pixels, not elf's 100: the cells' own min_size (64 by default) decides which small cells stay
    superpixels, _ = distance_transform_watershed(probability, membrane_threshold, sigma_seeds, min_size=25)
    return superpixels.astype(np.int64)


def _partition(
    superpixels: np.ndarray,
    probability: np.ndarray,
    method: str,
    boundary_bias: float,
    affinities=None,
    offsets=None,
    edge_classifier=None,
) -> np.ndarray:
    """(H, W) int64 segments: the superpixels joined by ``method`` (``"multicut"``, ``"gasp"`` or
    ``"lifted_multicut"``, with the network's affinities and their offsets) on their region adjacency graph, with
    costs from the (H, W) probability, or from ``edge_classifier`` on it, and ``boundary_bias`` (module
    docstring)."""
    from elf.segmentation import features, gasp, lifted_multicut, multicut  # a second to import: used here only

    # one thread: the cells of a block run on the core the network leaves them (scripts.volumes.LocalRunner)
    graph = features.compute_rag(superpixels, n_threads=1)
    if graph.number_of_edges == 0:  # one superpixel: nothing to join (and elf's weighting needs an edge)
        return superpixels
    evidence = maximum_filter(probability, footprint=generate_binary_structure(2, 1))
    boundary, length = features.compute_boundary_mean_and_length(graph, superpixels, evidence, n_threads=1).T
    if edge_classifier is not None:
        boundary = edge_classifier(edge_features(graph, superpixels, probability))
    if method == "lifted_multicut" and affinities is not None:
        costs = multicut.compute_edge_costs(boundary, length, beta=boundary_bias, weighting_scheme="all")
        uv, affinity = _lifted_edges(superpixels, affinities, offsets, graph)
        if len(uv) == 0:
            nodes = multicut.multicut_kernighan_lin(graph, costs)
        else:
            lifted_costs = multicut.compute_edge_costs(1.0 - affinity, beta=boundary_bias)
            nodes = lifted_multicut.lifted_multicut_kernighan_lin(graph, costs, uv, lifted_costs)
    elif method in ("multicut", "lifted_multicut"):
        costs = multicut.compute_edge_costs(boundary, length, beta=boundary_bias, weighting_scheme="all")
        nodes = multicut.multicut_kernighan_lin(graph, costs)
    else:
        costs = multicut.compute_edge_costs(boundary, beta=boundary_bias)
        nodes, _ = gasp.run_GASP(graph, costs, linkage_criteria="mean", edge_sizes=length)
    return features.project_node_labels_to_pixels(graph, superpixels, np.asarray(nodes), n_threads=1).astype(np.int64)


def _lifted_edges(superpixels: np.ndarray, affinities: np.ndarray, offsets: np.ndarray, graph) -> tuple:
    """(uv, mean affinity) of the superpixel pairs that the longer offsets link and the graph does not."""
    height, width = superpixels.shape
    nodes = int(superpixels.max()) + 1
    keys, values = [np.zeros(0, np.int64)], [np.zeros(0, np.float64)]
    for affinity, (dy, dx) in zip(affinities, offsets, strict=True):
        if abs(dy) + abs(dx) == 1 or abs(dy) >= height or abs(dx) >= width:
            continue
        source = (slice(max(-dy, 0), height - max(dy, 0)), slice(max(-dx, 0), width - max(dx, 0)))
        target = (slice(max(dy, 0), height - max(-dy, 0)), slice(max(dx, 0), width - max(-dx, 0)))
        u, v = superpixels[source].ravel(), superpixels[target].ravel()
        apart = u != v
        keys.append(np.minimum(u, v)[apart] * nodes + np.maximum(u, v)[apart])
        values.append(affinity[source].ravel()[apart])
    pairs, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    mean = np.bincount(inverse, np.concatenate(values), len(pairs)) / np.maximum(np.bincount(inverse), 1)
    local = np.sort(graph.uv_ids().astype(np.int64), axis=1)
    lifted = ~np.isin(pairs, local[:, 0] * nodes + local[:, 1])
    return np.stack([pairs // nodes, pairs % nodes], axis=1)[lifted].astype(np.uint64), mean[lifted]


def label_cells(
    membrane_probability: np.ndarray,
    membrane_threshold: float = 0.5,
    method: str = "components",
    min_size: int = 0,
    seed_depth: float = 2.0,
    long_range: int = 9,
    repulsion_bias: float = 0.5,
    merge_threshold: float = 0.5,
    sigma_seeds: float = 2.0,
    boundary_bias: float = 0.5,
    affinity_offsets: Sequence[Sequence[int]] | None = None,
    edge_classifier: EdgeClassifier | None = None,
    objects_on_background: bool = False,
) -> np.ndarray:
    """The cells of one section (the methods and their parameters: see the module docstring).

    Args:
        membrane_probability: (H, W) float membrane probability in [0, 1], or (1 + n, H, W): the membrane
            probability, then the n affinities of a network that predicts them (``affinity_offsets``), or
            (2, H, W): the membrane, then the foreground probability (``objects_on_background``).
        membrane_threshold: cell interior where the probability is below this.
        method: one of :data:`CELL_METHODS`.
        min_size: seeds of fewer interior pixels are dropped; their area goes to the neighbouring cells.
        seed_depth: ``"watershed"``, ``"agglomeration"``: h of the distance transform's h-maxima, in pixels.
        long_range: ``"mutex_watershed"``: the length in pixels of the repulsive offsets.
        repulsion_bias: ``"mutex_watershed"``: subtracted from the long-range affinities ``1 - max(p)``.
        merge_threshold: ``"agglomeration"``: neighbours merge while their mean boundary probability is below.
        sigma_seeds: ``"multicut"``, ``"gasp"``: smoothing of the distance transform whose maxima seed the
            superpixels, in pixels (higher: fewer superpixels).
        boundary_bias: ``"multicut"``, ``"gasp"``: the cost's bias, in (0, 1); higher gives more cells.
        affinity_offsets: the n ``[dy, dx]`` offsets of the affinities given after the membrane; None without.
        edge_classifier: ``"multicut"``, ``"gasp"``, ``"lifted_multicut"``: learned edge costs
            (:class:`scripts.edge_costs.EdgeClassifier`) instead of the mean boundary evidence; None for the mean.
        objects_on_background: the second channel is the foreground probability; pixels below 0.5 are background.

    Returns:
        (H, W) int32 cell ids 1..K, 0 on the 1-pixel lines between cells (and on the background); all 0 when
        there is no interior.
    """
    probability = np.asarray(membrane_probability, dtype=np.float32)
    affinities = foreground = None
    if objects_on_background and affinity_offsets is not None:
        raise ValueError("objects_on_background takes a membrane and foreground network, not affinities")
    if objects_on_background and probability.shape[:1] == (2,) and probability.ndim == 3:
        probability, foreground = probability[0], probability[1] >= 0.5
    elif probability.ndim == 3 and affinity_offsets is not None and len(probability) == 1 + len(affinity_offsets):
        probability, affinities = probability[0], probability[1:]
    if probability.ndim != 2:
        raise ValueError(
            f"membrane probability must be (H, W), (1 + n, H, W) with n affinity_offsets, or (2, H, W) with the "
            f"foreground of objects on a background; got shape {probability.shape} with "
            f"{None if affinity_offsets is None else len(affinity_offsets)} offsets"
            + (", objects on a background" if objects_on_background else "")
        )
    if not np.isfinite(probability).all():
        raise ValueError("membrane probability contains NaN or infinite values")
    if method not in CELL_METHODS:
        raise ValueError(f"cell method must be one of {CELL_METHODS}, got {method!r}")
    if not 0 < boundary_bias < 1:
        raise ValueError(f"boundary_bias must be in (0, 1), got {boundary_bias}")
    if edge_classifier is not None and method not in PARTITION_METHODS:
        raise ValueError(f"an edge classifier costs the edges of {PARTITION_METHODS}, not of {method!r}")
    interior = probability < membrane_threshold
    if foreground is not None:
        interior &= foreground
    if not interior.any():
        return np.zeros(probability.shape, dtype=np.int32)
    if method == "components":
        seeds = connected_components(interior, connectivity=1)
    elif method == "watershed":
        seeds = _distance_seeds(interior, seed_depth)
    else:  # the segments' interior pixels seed the cells: a segment that is all membrane is none
        if method == "mutex_watershed" and affinities is not None:
            segments = _learned_mutex_watershed(affinities, np.asarray(affinity_offsets), repulsion_bias)
        elif method == "mutex_watershed":
            segments = _mutex_watershed(probability, long_range, repulsion_bias)
        elif method in PARTITION_METHODS:
            superpixels = _superpixels(probability, membrane_threshold, sigma_seeds)
            offsets = None if affinity_offsets is None else np.asarray(affinity_offsets)
            segments = _partition(superpixels, probability, method, boundary_bias, affinities, offsets, edge_classifier)
        else:
            fragments = watershed(probability, markers=_distance_seeds(interior, seed_depth), connectivity=1)
            segments = _agglomerate(fragments, probability, merge_threshold)
        seeds = np.where(interior, segments + 1, 0)
    if min_size > 1:  # dropped seeds' area goes to their neighbours in the flood below
        seeds = remove_small_objects(seeds, max_size=min_size - 1)
    if not seeds.any():
        return np.zeros(probability.shape, dtype=np.int32)
    if method == "components":  # the ISBI scorer's thinning, from the kept seeds
        cells = thinned_segmentation(interior, seeds)
    else:
        cells = watershed(probability, markers=seeds, connectivity=1, watershed_line=True)
    if foreground is not None:
        cells = np.where(foreground, cells, 0)
    return _relabel(_largest_pieces(cells))


class CellLabeller:
    """A cell method and its parameters, as one component of the configs (arguments: see :func:`label_cells`).

    ``labeller(section)`` labels one (H, W) section, ``labeller.stack(stack)`` a (Z, H, W) stack with ids
    unique across it (:func:`label_cell_stack`). ``edge_classifier`` is the path of a file that
    :meth:`scripts.edge_costs.EdgeClassifier.save` wrote, read once here; ``options`` keeps the path, as
    configured, for the reports.
    """

    def __init__(self, method: str = "components", membrane_threshold: float = 0.5, **parameters) -> None:
        if method not in CELL_METHODS:
            raise InputError(f"--cells#method: {method!r} is not one of {', '.join(CELL_METHODS)}")
        membrane_threshold = number(membrane_threshold, "cells#membrane_threshold", 0, 1)
        if "min_size" in parameters:
            parameters["min_size"] = number(parameters["min_size"], "cells#min_size", 0, integer=True)
        if "sigma_seeds" in parameters:
            parameters["sigma_seeds"] = number(parameters["sigma_seeds"], "cells#sigma_seeds", 0)
        if "boundary_bias" in parameters:
            bias = parameters["boundary_bias"] = number(parameters["boundary_bias"], "cells#boundary_bias")
            if not 0 < bias < 1:
                raise InputError(f"--cells#boundary_bias: {bias!r} must lie strictly between 0 and 1")
        objects_on_background = flag(parameters.get("objects_on_background", False), "objects_on_background")
        if "objects_on_background" in parameters:
            parameters["objects_on_background"] = objects_on_background
        offsets = parameters.pop("affinity_offsets", None)  # null (a membrane network): not an option at all
        if offsets is not None:
            parameters["affinity_offsets"] = offsets
        if offsets is not None and objects_on_background:
            raise InputError(
                "--objects_on_background true: needs a network with a foreground output (configs/objects.json), "
                "not affinities (--affinity_offsets)"
            )
        if offsets is not None and (np.ndim(offsets) != 2 or np.shape(offsets)[1] != 2):
            raise InputError(f"--cells#affinity_offsets {offsets!r}: must be a list of [dy, dx] offsets, or null")
        classifier = parameters.pop("edge_classifier", None)  # null: the mean boundary evidence
        if classifier is not None:
            if method not in PARTITION_METHODS:
                raise InputError(
                    f"--cells#edge_classifier: method {method!r} has no edges to cost; use one of "
                    f"{', '.join(PARTITION_METHODS)}"
                )
            parameters["edge_classifier"] = str(classifier)
        self.options = {"method": method, "membrane_threshold": membrane_threshold, **parameters}  # as configured
        self._label_options = dict(self.options)
        if classifier is not None:
            self._label_options["edge_classifier"] = EdgeClassifier.load(classifier)
        probe = np.array([[0.0, 1.0, 0.0]], np.float32)  # two cells
        if objects_on_background:
            probe = np.stack([probe, np.ones_like(probe)])
        try:
            label_cells(probe, **self._label_options)
        except TypeError as error:  # a parameter label_cells does not take
            raise InputError(f"cells: {error}") from error

    def __call__(self, membrane_probability: np.ndarray) -> np.ndarray:
        """The cells of an (H, W) membrane probability, or of (1 + n, H, W) with the network's affinities or
        foreground."""
        return label_cells(membrane_probability, **self._label_options)

    def stack(self, membrane_probability: np.ndarray) -> np.ndarray:
        return label_cell_stack(membrane_probability, **self._label_options)

    def __repr__(self) -> str:
        return f"CellLabeller({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


def _largest_pieces(cells: np.ndarray) -> np.ndarray:
    """Each cell reduced to its largest 4-connected piece; the rest becomes line (0).

    A watershed with lines hands the pixel where two lines cross to a diagonal neighbour, which leaves it
    detached from its cell.
    """
    pieces = connected_components(cells, connectivity=1, background=0)
    if pieces.max() == int((np.bincount(cells.ravel())[1:] > 0).sum()):
        return cells  # nothing detached: one piece per cell
    owner = np.zeros(pieces.max() + 1, dtype=cells.dtype)
    owner[pieces.ravel()] = cells.ravel()
    sizes = np.bincount(pieces.ravel())
    largest = np.zeros(cells.max() + 1, dtype=np.int64)  # the biggest piece of each cell
    order = np.lexsort((sizes[1:], owner[1:])) + 1  # by cell, then size: the last piece of each cell wins
    largest[owner[order]] = order
    keep = np.zeros(pieces.max() + 1, dtype=bool)
    keep[largest[largest > 0]] = True
    keep[0] = False
    return np.where(keep[pieces], cells, 0)


def _relabel(cells: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..K (0 stays 0), so dropped seeds and pieces leave no gaps."""
    present = np.bincount(cells.ravel()) > 0
    present[0] = False
    lookup = np.zeros(present.size, dtype=np.int32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lookup[cells]


def label_cell_stack(membrane_probability: np.ndarray, **options) -> np.ndarray:
    """:func:`label_cells` of every section of a (Z, H, W) stack (or (Z, 1 + n, H, W) with affinities), with ids
    unique across the stack.

    Returns:
        (Z, H, W) uint32; section z holds ids following those of sections 0..z-1.
    """
    if np.ndim(membrane_probability) not in (3, 4):
        raise ValueError(
            f"membrane probability stack must be (Z, H, W), or (Z, 1 + n, H, W) with affinities, got shape "
            f"{np.shape(membrane_probability)}"
        )
    shape = np.shape(membrane_probability)
    cells = np.zeros((shape[0], *shape[-2:]), dtype=np.uint32)
    next_id = 0
    for z, section in enumerate(membrane_probability):
        labels = label_cells(section, **options).astype(np.uint32)
        cells[z] = np.where(labels > 0, labels + next_id, 0)
        next_id += int(labels.max())
    return cells
