"""Learned edge costs for the graph partitions: an edge classifier over boundary features.

The multicut pipelines of Beier et al. (Nature Methods 2017) do not cost an edge between two superpixels by its
mean boundary probability alone: a classifier, learned on sections with ground truth, turns statistics of the
boundary over several filtered versions of the probability map into the probability that the edge separates
two cells. Here:

* :func:`edge_features`: for each edge of the superpixels' region adjacency graph, the 12 statistics of elf's
  boundary features (mean, median, sd, min, max, 5 quantiles, length) over the boundary evidence (the higher
  probability of each pixel pair, as the mean cost uses), over the probability smoothed at two scales and over
  its Hessian eigenvalues (ridges), then the log sizes of the smaller and the larger superpixel;
* :func:`edge_labels`: whether the ground truth puts the two superpixels in different cells;
* :class:`EdgeClassifier`: a logistic regression on the standardised features, learned with scikit-learn and
  stored as a small JSON file of numbers, so a shipped classifier is read without unpickling anything.

The classifier must learn from maps like the ones it will cost: maps of sections the network did not train on
(``bench/edge_classifier.py`` learns it on the out-of-fold maps of ``bench/nested_folds.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import generate_binary_structure, maximum_filter
from skimage.measure import label as connected_components

from .errors import InputError
from .writers import atomic_write

__all__ = ["FEATURE_FILTERS", "EdgeClassifier", "edge_features", "edge_labels"]

#: elf's filter names and their scales, in pixels, applied to the probability before the boundary statistics
FEATURE_FILTERS = {"gaussianSmoothing": [1.6, 4.2], "hessianOfGaussianEigenvalues": [1.6]}
#: 12 statistics of the evidence, 12 for each filter response channel (the Hessian has 2), 2 region sizes
NUM_FEATURES = 12 + 12 * (2 + 2) + 2


def edge_features(graph, superpixels: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """(E, NUM_FEATURES) float64 features of the E edges of ``graph``, elf's region adjacency graph of the (H, W)
    ``superpixels``, from the (H, W) membrane probability (module docstring)."""
    from elf.segmentation import features

    probability = np.asarray(probability, dtype=np.float32)
    evidence = maximum_filter(probability, footprint=generate_binary_structure(2, 1))
    boundary = features.compute_boundary_features(graph, superpixels, evidence, n_threads=1)
    filtered = features.compute_boundary_features_with_filters(
        graph, superpixels, probability, n_threads=1, filters=FEATURE_FILTERS
    )
    sizes = np.bincount(superpixels.ravel(), minlength=graph.number_of_nodes)
    uv = graph.uv_ids().astype(np.int64)
    first, second = sizes[uv[:, 0]], sizes[uv[:, 1]]
    region = np.log1p(np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1))
    return np.concatenate([boundary, filtered, region], axis=1).astype(np.float64)


def edge_labels(graph, superpixels: np.ndarray, membrane_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E,) labels, 1 where the ground truth puts an edge's two superpixels in different cells, and (E,) the
    edges to learn from: those whose superpixels both lie mostly in a cell (not on the true membrane).

    Args:
        membrane_truth: (H, W) ground-truth membrane mask (nonzero = membrane), whose 4-connected interior
            components are the true cells, as the metric's.
    """
    from elf.segmentation.learning import compute_edge_labels

    truth = connected_components(np.asarray(membrane_truth) == 0, connectivity=1).astype(np.uint32)
    labels, usable = compute_edge_labels(graph, superpixels, truth, ignore_label=0, n_threads=1)
    return labels.astype(np.int64), usable.astype(bool)


class EdgeClassifier:
    """P(an edge separates two cells) from :func:`edge_features`: a logistic regression on standardised features.

    Args:
        mean, scale: (F,) the features' standardisation, ``(x - mean) / scale``.
        coefficients: (F,) the weights; ``intercept``: the bias.
        about: what it learned from (free-form, kept in the file).
    """

    def __init__(self, mean, scale, coefficients, intercept: float, about: dict | None = None) -> None:
        self.mean, self.scale, self.coefficients = (np.asarray(v, np.float64) for v in (mean, scale, coefficients))
        self.intercept = float(intercept)
        self.about = dict(about or {})
        if not self.mean.shape == self.scale.shape == self.coefficients.shape == (NUM_FEATURES,):
            raise ValueError(
                f"an edge classifier needs {NUM_FEATURES} means, scales and coefficients, got "
                f"{self.mean.shape}, {self.scale.shape}, {self.coefficients.shape}"
            )
        if not (np.isfinite(self.mean).all() and np.isfinite(self.coefficients).all() and (self.scale > 0).all()):
            raise ValueError("an edge classifier's means and coefficients must be finite and its scales positive")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, regularisation: float = 1.0, about=None) -> EdgeClassifier:
        """Learn from (N, F) ``features`` and (N,) 0/1 ``labels`` (scikit-learn's L2 logistic regression with
        inverse strength ``regularisation``, the two classes weighted equally)."""
        from sklearn.linear_model import LogisticRegression

        mean, scale = features.mean(axis=0), features.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000)
        model.fit((features - mean) / scale, labels)
        return cls(mean, scale, model.coef_[0], model.intercept_[0], about)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(E, F) features -> (E,) probabilities that each edge separates two cells."""
        logits = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.coefficients
        return 1.0 / (1.0 + np.exp(-(logits + self.intercept)))

    def save(self, path: str | Path) -> None:
        document = {
            "kind": "logistic_regression",
            "features": "scripts.edge_costs.edge_features",
            "feature_filters": FEATURE_FILTERS,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coefficients": self.coefficients.tolist(),
            "intercept": self.intercept,
            "about": self.about,
        }
        atomic_write(Path(path), (json.dumps(document, indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> EdgeClassifier:
        """Read a file written by :meth:`save`; a missing, unreadable or foreign file stops with one line."""
        try:
            document = json.loads(Path(path).read_text())
            if document.get("kind") != "logistic_regression" or document.get("feature_filters") != FEATURE_FILTERS:
                raise ValueError(
                    f"not an edge classifier for these features (kind {document.get('kind')!r}, filters "
                    f"{document.get('feature_filters')!r})"
                )
            return cls(document["mean"], document["scale"], document["coefficients"], document["intercept"],
                       document.get("about"))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{path}: cannot read the edge classifier: {error}") from error
