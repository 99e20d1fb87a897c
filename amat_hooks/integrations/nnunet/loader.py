"""nnU-Net's data loader, subclassed to report which slice each 2D sample came from.

With the ``2d`` configuration nnU-Net's loader treats a case as pseudo-3D and
``get_bbox`` picks the slice (the first lower bound). AMAT keys margins by
``(case key, slice)``, the paper's 2D samples, so we record that lower bound per sample
and put the list in the batch as ``amat_slices``. Nothing else changes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

#: Batch key holding the per-sample slice index (2d) or patch z start (3d, unused for ids).
SLICE_KEY = "amat_slices"


class nnUNetDataLoaderWithSlices(nnUNetDataLoader):
    """Same batches as :class:`nnUNetDataLoader`, plus ``batch['amat_slices']``."""

    def get_bbox(self, *args, **kwargs):
        lbs, ubs = super().get_bbox(*args, **kwargs)
        picked = getattr(self, "_amat_picked", None)
        if picked is not None:
            picked.append(int(lbs[0]))
        return lbs, ubs

    def generate_train_batch(self):
        self._amat_picked = []
        try:
            batch = super().generate_train_batch()
        finally:
            picked, self._amat_picked = self._amat_picked, None
        if len(picked) != len(batch["keys"]):
            raise RuntimeError(f"nnU-Net's loader chose {len(batch['keys'])} samples but reported "
                               f"{len(picked)} slices; this nnunetv2 version samples differently - "
                               f"please report it")
        batch[SLICE_KEY] = picked
        return batch


@contextlib.contextmanager
def slice_reporting_loader() -> Iterator[None]:
    """While active, nnU-Net's trainer module builds :class:`nnUNetDataLoaderWithSlices`.

    nnU-Net constructs its loaders inline in ``get_dataloaders`` (and starts worker
    processes there), so the class is swapped for the duration of that call only.
    """
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = nnUNetDataLoaderWithSlices
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original
