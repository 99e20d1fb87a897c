"""2D samples the way nnU-Net's validation prepares them (shared by calibration and
evaluation): preprocessed case -> per-slice centre crop/pad to the patch size -> nnU-Net's
validation transforms (labels -1 -> 0, deep-supervision targets)."""
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
