"""Samples the way nnU-Net's validation prepares them (shared by calibration and evaluation):
preprocessed case -> crop/pad to the patch size -> nnU-Net's validation transforms (labels
-1 -> 0, deep-supervision targets).

A sample is what training keys a margin by: for 2d one slice (centre crop/pad of the slice),
for 3d one patch per case - the whole case where it fits the patch (padded), else the
patch centred on the foreground's bounding box (on the case centre without foreground),
moved inside the case.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor


def load_cases(trainer, keys: Iterable[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key, data [C, Z, Y, X], seg [1, Z, Y, X]) of preprocessed cases; the previous stage's
    segmentation is appended to ``seg`` for cascades, as nnU-Net does."""
    keys = list(keys)
    ds = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys,
                               folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    for key in keys:
        data, seg, seg_prev, _ = ds.load_case(key)
        data, seg = np.asarray(data), np.asarray(seg)
        if seg_prev is not None:
            seg = np.concatenate([seg, np.asarray(seg_prev)[None]], 0)
        yield str(key), data, seg


def validation_transforms(trainer):
    lm = trainer.label_manager
    return trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(), is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)


def patch_box(shape: tuple[int, ...], patch: tuple[int, ...], seg: np.ndarray | None = None) -> list[list[int]]:
    """The 3d sample's box ``[[lo, hi], ...]`` per spatial axis (see the module docstring):
    centred on the case, or on the foreground's bounding box where the case is larger than
    the patch, then moved inside the case (a negative ``lo`` pads)."""
    fg = np.argwhere(seg > 0) if seg is not None else np.zeros((0, len(shape)))
    box = []
    for axis, (s, p) in enumerate(zip(shape, patch)):
        if s <= p or len(fg) == 0:
            lo = (s - p) // 2
        else:
            centre = (int(fg[:, axis].min()) + int(fg[:, axis].max()) + 1) // 2
            lo = min(max(centre - p // 2, 0), s - p)
        box.append([lo, lo + p])
    return box


def prepared_samples(trainer, cases: Iterable[tuple[str, np.ndarray, np.ndarray]]
                     ) -> Iterator[tuple[str, int, Tensor, list[Tensor], Tensor]]:
    """(case, index, image [C, *patch], targets (one per deep-supervision scale) [1, *], valid
    [*patch] bool: voxels that are not padding): every slice of every case (2d, index = z),
    or one patch per case (3d, index 0)."""
    patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    if len(patch) == 2:
        yield from prepared_slices(trainer, cases)
        return
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    transforms = validation_transforms(trainer)
    for case, data, seg in cases:
        bbox = patch_box(tuple(data.shape[1:]), patch, seg[0])
        img = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
        sg = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
        valid = sg[0] != -1
        out = transforms(image=img, segmentation=sg)
        segs = out["segmentation"] if isinstance(out["segmentation"], list) else [out["segmentation"]]
        yield case, 0, out["image"], segs, valid


def prepared_slices(trainer, cases: Iterable[tuple[str, np.ndarray, np.ndarray]]
                    ) -> Iterator[tuple[str, int, Tensor, list[Tensor], Tensor]]:
    """(case, z, image [C, *patch], targets (one per deep-supervision scale) [1, *], valid
    [*patch] bool: pixels that are not padding) for every slice of every case."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    if len(patch) != 2:
        raise ValueError(f"2D samples need a 2d configuration; {trainer.configuration_name!r} has a "
                         f"{len(patch)}D patch")
    transforms = validation_transforms(trainer)
    for case, data, seg in cases:
        for z in range(data.shape[1]):
            bbox = [[z, z + 1]] + [[(s - p) // 2, (s - p) // 2 + p] for s, p in zip(data.shape[2:], patch)]
            img = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()[:, 0]
            sg = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)[:, 0]
            valid = sg[0] != -1
            out = transforms(image=img, segmentation=sg)
            segs = out["segmentation"] if isinstance(out["segmentation"], list) else [out["segmentation"]]
            yield case, z, out["image"], segs, valid
