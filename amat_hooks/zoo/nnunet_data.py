"""nnU-Net raw datasets: a generated one (tests, benchmark) and the MSD Hippocampus converter."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from amat_hooks.atomic_files import atomic_write_json

#: Paper split of MSD Task04 Hippocampus (section 3.1): train / validation / test cases.
HIPPOCAMPUS_SPLIT = (208, 17, 35)


def _write_nifti(array_zyx: np.ndarray, path: Path, spacing_xyz=(1.0, 1.0, 1.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.nii.gz")
    sitk.WriteImage(img, str(tmp))
    os.replace(tmp, path)


def make_generated_dataset(raw_root: str | os.PathLike, dataset_id: int = 990, name: str = "AMATShapes",
                           cases: int = 12, slices: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write ``Dataset{id}_{name}`` in nnU-Net raw format: ``cases`` small volumes of
    ``slices`` independent 2D images (bright ellipses = label 1, a distractor blob, noise)
    from :func:`amat_hooks.zoo.shapes.shapes_segmentation`. Seeded; no downloads."""
    from amat_hooks.zoo.shapes import shapes_segmentation

    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    if cases < 2 or slices < 1 or size < 16:
        raise ValueError("need cases >= 2, slices >= 1 and size >= 16 for nnU-Net to plan a 2d configuration")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    images, labels = shapes_segmentation(cases * slices, size=size, seed=seed)
    for c in range(cases):
        vol = images[c * slices:(c + 1) * slices, 0].numpy().astype(np.float32) * 100 + 500  # MRI-like range
        lab = labels[c * slices:(c + 1) * slices].numpy().astype(np.uint8)
        _write_nifti(vol, folder / "imagesTr" / f"shapes_{c:03d}_0000.nii.gz", (1.0, 1.0, 3.0))
        _write_nifti(lab, folder / "labelsTr" / f"shapes_{c:03d}.nii.gz", (1.0, 1.0, 3.0))
    atomic_write_json(folder / "dataset.json", {
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "shape": 1},
        "numTraining": cases, "file_ending": ".nii.gz", "name": name,
        "description": f"amat-hooks generated data, seed {seed}: {cases} cases x {slices} slices of {size}x{size}",
    })
    return folder


def convert_hippocampus(src: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = 4,
                        preprocessed_root: str | os.PathLike | None = None, seed: int = 0,
                        split: tuple[int, int, int] = HIPPOCAMPUS_SPLIT) -> dict[str, Any]:
    """MSD Task04 Hippocampus (``imagesTr``/``labelsTr``, no dataset.json) -> nnU-Net raw.

    A seeded permutation of the sorted cases gives the paper's 208/17/35 split. Train +
    validation cases go to ``imagesTr`` and the split to ``splits_final.json`` (fold 0:
    train 208, val 17) in the raw folder and, when given, in the preprocessed folder where
    nnU-Net reads it; the 35 test cases go to ``imagesTs``/``labelsTs``. A smaller ``split``
    takes the first cases of the same permutation (CI-sized runs on real data).
    """
    src = Path(src)
    img_dir, lab_dir = src / "imagesTr", src / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"{src} is not an MSD Hippocampus folder: expected imagesTr/ and labelsTr/ "
                                f"(e.g. ../shared/data/msd_hippocampus)")
    cases = sorted(p.name[:-len(".nii.gz")] for p in img_dir.glob("*.nii.gz") if not p.name.startswith("."))
    missing = [c for c in cases if not (lab_dir / f"{c}.nii.gz").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no label in {lab_dir}: {missing[:5]}")
    if len(cases) < sum(split) or min(split) < 1:
        raise ValueError(f"the {'/'.join(map(str, split))} split needs {sum(split)} cases (each part >= 1), found "
                         f"{len(cases)} in {img_dir}")
    order = np.random.RandomState(seed).permutation(len(cases))
    n_tr, n_val, _ = split
    train = sorted(cases[i] for i in order[:n_tr])
    val = sorted(cases[i] for i in order[n_tr:n_tr + n_val])
    test = sorted(cases[i] for i in order[n_tr + n_val:])
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_Hippocampus"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for group, im_sub, lab_sub in ((train + val, "imagesTr", "labelsTr"), (test, "imagesTs", "labelsTs")):
        for c in group:
            shutil.copyfile(img_dir / f"{c}.nii.gz", folder / im_sub / f"{c}_0000.nii.gz")
            shutil.copyfile(lab_dir / f"{c}.nii.gz", folder / lab_sub / f"{c}.nii.gz")
    atomic_write_json(folder / "dataset.json", {
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(train) + len(val), "file_ending": ".nii.gz", "name": "Hippocampus",
        "description": f"MSD Task04 Hippocampus, paper split {'/'.join(map(str, split))} (seed {seed}); "
                       f"test cases in imagesTs/labelsTs",
    })
    splits = [{"train": train, "val": val}]
    atomic_write_json(folder / "splits_final.json", splits)
    written = [str(folder / "splits_final.json")]
    if preprocessed_root is not None:
        pre = Path(preprocessed_root) / folder.name / "splits_final.json"
        atomic_write_json(pre, splits)
        written.append(str(pre))
    return {"folder": str(folder), "train": len(train), "val": len(val), "test": len(test), "splits": written}
