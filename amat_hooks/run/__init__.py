"""``amat run``: adversarial training for an unmodified training script.

    amat run --adv amat --adv-step 1 --adv-xi-rule mean+2std -- python train.py --epochs 500

The script runs in this process (``runpy``) after the runner patched torch from outside;
by concern:

==============  ==========================================================================
:mod:`.ids`     sample ids: the dataset index travels with the sample through the loader
:mod:`.patches` the DataLoader / Module / Optimizer / ``torch.save`` patches, undone at the end
:mod:`.split`   the model's forward on the handed 2B rows: two passes (default) or one
:mod:`.host`    :class:`Runner`, the host: attack each training batch, margin test from the
                script's own noisy forward, epochs, sidecars and ``amat_state.json``
:mod:`.adapter` :class:`CriterionAdapter`: the generic ``(x, y)`` batches of a script trained
                with a ``torch.nn`` loss module; :class:`RunnerError`
:mod:`.checkpoints` weights as scripts save them (nested dicts, ``module.`` prefixes)
:mod:`.launcher` running ``python SCRIPT.py`` / ``python -m module`` with its exit code
:mod:`.plugin`  the generic ``amat_adapter`` answer and the ``amat run`` command
==============  ==========================================================================

The runner knows no trainer: it asks the plugins once which
:class:`~amat_hooks.adapter.BatchAdapter` fits the script's batches (``amat_adapter``); the
Multi-Task U-Net's (its batches, its three loss terms, BCE vs Dice) lives in
:mod:`amat_hooks.integrations.multitask_unet.adapter`.
"""
from __future__ import annotations

from amat_hooks.run.adapter import CriterionAdapter, RunnerError
from amat_hooks.run.host import PendingBatch, Runner
from amat_hooks.run.resume import SIDECAR_SUFFIX, STATE_NAME
from amat_hooks.run.ids import IndexCollate, IndexedBatch, IndexedDataset
from amat_hooks.run.launcher import EXIT_REFUSED, EXIT_USAGE, parse_command, run_script
from amat_hooks.run.patches import Patches
from amat_hooks.run.split import BATCH_MODES

__all__ = [
    "BATCH_MODES", "CriterionAdapter", "EXIT_REFUSED", "EXIT_USAGE", "IndexCollate", "IndexedBatch", "IndexedDataset",
    "Patches", "PendingBatch", "Runner", "RunnerError", "SIDECAR_SUFFIX", "STATE_NAME", "parse_command", "run_script",
]
