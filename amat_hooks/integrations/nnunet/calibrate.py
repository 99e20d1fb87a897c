"""Clean slice losses of an nnU-Net model for ``amat calibrate nnunet`` (paper section 2.2).

Every training slice of the fold is scored once with the trainer's own loss object
(the same per-sample function AMAT uses during training), prepared the way nnU-Net's
validation pipeline prepares a sample: centre crop/pad to the patch size, labels -1 -> 0,
deep-supervision targets. The shared command turns them into xi (mean, mean + 2 std).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amat_hooks.tasks import CalibrationSet, TaskError
from amat_hooks.integrations.nnunet.losses import TERM_NAMES, per_sample_terms
from amat_hooks.integrations.nnunet.settings import default_xi_path


def clean_losses(trainer, keys, batch_size: int, log=print) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Per-slice clean losses ``[N]`` and their ``(case, slice)`` ids."""
    from amat_hooks.integrations.nnunet.slices import load_cases, prepared_slices

    if len(trainer.configuration_manager.patch_size) != 2:
        raise TaskError(f"calibration is implemented for 2d configurations (samples = slices); "
                               f"{trainer.configuration_name!r} has a "
                               f"{len(trainer.configuration_manager.patch_size)}D patch")
    net = trainer.network
    net.eval()
    ds = trainer.enable_deep_supervision
    losses: list[float] = []
    ids: list[tuple[str, int]] = []
    pending: list[tuple[torch.Tensor, Any, tuple[str, int]]] = []

    def flush():
        if not pending:
            return
        x = torch.stack([p[0] for p in pending]).to(trainer.device)
        segs = [p[1] for p in pending]
        target = [torch.stack([s[i] for s in segs]).to(trainer.device) for i in range(len(segs[0]))]
        with torch.no_grad():
            terms = per_sample_terms(trainer.loss, net(x), target if ds else target[0], ds)
        losses.extend(terms[:, 0].double().cpu().tolist())
        ids.extend(p[2] for p in pending)
        pending.clear()

    t0 = time.perf_counter()
    cases_done = set()
    for case, z, image, segs, _ in prepared_slices(trainer, load_cases(trainer, keys)):
        if case not in cases_done:
            cases_done.add(case)
            if len(cases_done) % 25 == 0:
                log(f"  {len(cases_done)}/{len(keys)} cases, {len(losses) + len(pending)} slices, "
                    f"{time.perf_counter() - t0:.0f} s")
        pending.append((image, segs, (case, z)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return np.asarray(losses, dtype=np.float64), ids


def clean_losses_of_model(dataset: str, configuration: str, fold: str, trainer_name: str = "nnUNetTrainerSTD",
                          plans: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth",
                          device: str = "cpu", batch_size: int | None = None, max_cases: int | None = None,
                          log=print) -> CalibrationSet:
    """The clean model's per-slice losses on the fold's training cases."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from amat_hooks.integrations.nnunet.evaluate import checkpoint_path, drop_load_log, existing_logs

    fold_arg: Any = fold if fold == "all" else int(fold)
    expected = checkpoint_path(dataset, configuration, fold, trainer_name, plans, checkpoint)
    before = existing_logs(expected.parent if expected is not None else None)
    trainer = get_trainer_from_args(str(dataset), configuration, fold_arg, trainer_name, plans,
                                    device=torch.device(device))
    ckpt = Path(trainer.output_folder) / checkpoint
    if not ckpt.is_file():
        drop_load_log(trainer, before)
        raise TaskError(
            f"no clean model at {ckpt}; train one first: nnUNetv2_train {dataset} {configuration} {fold} "
            f"-tr {trainer_name}" + ("" if plans == "nnUNetPlans" else f" -p {plans}"))
    trainer.initialize()
    trainer.load_checkpoint(str(ckpt))
    drop_load_log(trainer, before)
    saved = torch.load(str(ckpt), map_location="cpu", weights_only=False)
    mode = (saved.get("amat_hooks") or {}).get("mode")
    if mode not in (None, "none"):
        log(f"WARNING: {ckpt} was trained adversarially (mode {mode!r}); the paper calibrates xi on a "
            f"clean (STD) model")
    tr_keys, _ = trainer.do_split()
    tr_keys = sorted(str(k) for k in tr_keys)
    if max_cases is not None:
        tr_keys = tr_keys[:max_cases]
    bs = batch_size or int(trainer.configuration_manager.batch_size)
    log(f"calibrating xi on {len(tr_keys)} training cases of {trainer.plans_manager.dataset_name} "
        f"({configuration}, fold {fold}) with {ckpt}")
    t0 = time.perf_counter()
    losses, ids = clean_losses(trainer, tr_keys, bs, log=log)
    log(f"scored {len(losses)} slices in {time.perf_counter() - t0:.0f} s")
    default = default_xi_path(trainer.preprocessed_dataset_folder_base, configuration,
                              trainer.plans_manager.plans_name, fold)
    return CalibrationSet(
        terms=torch.from_numpy(losses).unsqueeze(1), term_names=list(TERM_NAMES),
        identity={"dataset": trainer.plans_manager.dataset_name, "configuration": configuration,
                  "plans": trainer.plans_manager.plans_name},
        source={"fold": str(fold), "trainer": trainer_name, "checkpoint": str(ckpt), "n_cases": len(tr_keys),
                "default_path": str(default)})
