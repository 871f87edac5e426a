"""Out-of-fold membrane maps of sections 0-23: the inner folds of nested cross-validation around fold 4.

Fold 4 trains on 0-17, chooses its checkpoint on 18-23 and leaves 24-29 to the test. Six validation sections
choose cell methods and their parameters poorly (docs/cells.md), so issue 25 asks for choices on out-of-fold maps
of all 24 sections of 0-23. Inner fold ``j`` (0, 1, 2) trains the default recipe with ``--fold 4
--validation_fold j``: on the 18 sections of 0-23 outside block ``j``, its checkpoint chosen on block ``j``, as
fold 4's own model is on 18-23 (inner fold 3, ``--model_path``, by default ``models/fold4/``). Each block's map
comes from the model that did not train on it, so every section of 0-23 has a map like the ones fold 4's model
makes of unseen sections, and no model, checkpoint or map here has seen 24-29.

    python bench/nested_folds.py [--inner_folds 0 1 2] [--output docs/results/nested_folds]
        [--model_path bundle/models/fold4/model.pt]

Each inner fold writes ``OUTPUT/fold_4_validation_j/`` (training log; weights under ``models/``, not committed)
and is skipped when trained before; an interrupted training resumes from its latest checkpoint. Then every block
is predicted as inference.json does, into ``OUTPUT/oof_maps.npz`` (``maps``: (24, H, W) float32, ``slices``; not
committed), which ``bench/cell_methods.py --oof_maps`` chooses on. About 25 minutes per inner fold on 2 CPU cores.

``--all_sections`` trains the outer model instead: the same recipe on all 24 sections of 0-23, with nothing left
to validate on, so the final weight average is the model (the inner folds show what that costs against the
checkpoint they chose on their validation block), into ``OUTPUT/fold_4_all_sections/``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_methods import BUNDLE, predict  # noqa: E402
from cross_validation import train  # noqa: E402

from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402
from scripts.writers import atomic_write  # noqa: E402

FOLD, NUM_FOLDS = 4, 5


def train_inner_fold(validation_fold: int, output: Path, dataset_dir: Path) -> Path:
    """The recipe on 0-23 outside block ``validation_fold``, its checkpoint chosen on that block."""
    folder = output / f"fold_{FOLD}_validation_{validation_fold}"
    return train(folder, FOLD, dataset_dir, ("--validation_fold", str(validation_fold)))


def train_all_sections(output: Path, dataset_dir: Path) -> Path:
    """The recipe on all of 0-23 (fold 4's training and validation sections), nothing validated."""
    everything = ("--train#datalist", "$@sections['train'] + @sections['validation']", "--validate#datalist", "$[]")
    return train(output / f"fold_{FOLD}_all_sections", FOLD, dataset_dir, everything)


def out_of_fold_maps(models: dict[int, Path], items: list[dict]) -> tuple[np.ndarray, list[int]]:
    """Each inner fold's validation block predicted by that fold's model: (sections, H, W), and their slices."""
    maps, slices = [], []
    for validation_fold, model_path in sorted(models.items()):
        block = split_sections(items, FOLD, NUM_FOLDS, validation_fold=validation_fold)["validation"]
        maps += predict(block, model_path)
        slices += [item["slice"] for item in block]
    return np.stack(maps).astype(np.float32), slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner_folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--model_path", type=Path, default=BUNDLE / "models" / "fold4" / "model.pt", help="fold 4's model"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/results/nested_folds"))
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--all_sections", action="store_true", help="train the outer model on all of 0-23")
    args = parser.parse_args()
    output, dataset_dir = args.output.resolve(), args.dataset_dir.resolve()
    if args.all_sections:
        print(f"{train_all_sections(output, dataset_dir)}: trained on sections 0-23", flush=True)
        return
    models = {j: train_inner_fold(j, output, dataset_dir) for j in args.inner_folds}
    models[FOLD - 1] = args.model_path.resolve()
    items = load_labelled_stack(dataset_dir / "train-volume.tif", dataset_dir / "train-labels.tif")
    maps, slices = out_of_fold_maps(models, items)
    stored = io.BytesIO()
    np.savez(stored, maps=maps, slices=np.array(slices), models=np.array([str(models[j]) for j in sorted(models)]))
    atomic_write(output / "oof_maps.npz", stored.getvalue())
    print(f"{output / 'oof_maps.npz'}: out-of-fold maps of sections {slices[0]}-{slices[-1]}", flush=True)


if __name__ == "__main__":
    main()
