"""The base class of nnUNetTrainerAMAT / SAT / STD: Algorithm 1 inside nnU-Net's own step.

How the step is wired: ``train_step`` temporarily replaces ``self.loss`` by a callable and
calls nnU-Net's unmodified ``train_step``. nnU-Net moves the batch, zeroes gradients, runs
the clean forward under its autocast, calls "the loss" - our callable, which hands the
batch to the core (:class:`AdversarialEngine`: clean loss from nnU-Net's own loss object on
that very output, PGD with the margins, noisy forward, ``(L0 + L1) / 2``, margin update) -
and then does its own backward, grad-scaler, ``clip_grad_norm_(12)`` and optimizer step.
So autocast, clipping, deep supervision and ``self.loss`` stay nnU-Net's.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Union

import torch
from torch import Tensor

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ...config import AdvConfig, env_wording, force_resume_requested
from ...engine import AdversarialEngine
from ...atomic_files import atomic_torch_save
from ...margins import MarginMismatchError
from ...plugins import get_plugin_manager
from ...policies import AMAT
from .batch import NnUNetBatch
from .loader import SLICE_KEY, slice_reporting_loader
from .settings import calibrate_command, default_xi_path, load_xi_file, read_settings

#: Key of our state inside nnU-Net's checkpoint dict.
CHECKPOINT_KEY = "amat_hooks"
#: Extra per-epoch series in nnU-Net's logger (one value per epoch, like nnU-Net's own).
LOG_KEYS = ("amat_margin_mean", "amat_margin_min", "amat_margin_max", "amat_xi", "amat_nan_samples")


class AdversarialCheckpointError(RuntimeError):
    """A checkpoint's AMAT state does not fit this run."""


class nnUNetTrainerAdversarial(nnUNetTrainer):
    """nnU-Net's trainer with STD/SAT/AMAT training chosen by the subclass (``amat_mode``).

    Settings come from ``AMAT_*`` environment variables (see docs/nnunet.md); length
    variants set ``amat_epochs``.
    """

    amat_mode = "amat"
    amat_epochs: int | None = None
    amat_is_nnunet = True  # lets the plugin recognise its host without importing nnU-Net

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.amat_settings = read_settings(self.amat_mode, self.plans_manager.dataset_name,
                                  trainer_name=type(self).__name__)
        epochs = self.amat_settings.epochs or self.amat_epochs
        if epochs:
            self.num_epochs = epochs
        if self.amat_settings.iters:
            self.num_iterations_per_epoch = self.amat_settings.iters
        if self.amat_settings.val_iters:
            self.num_val_iterations_per_epoch = self.amat_settings.val_iters
        self.amat_engine: AdversarialEngine | None = None
        self.amat_history: list[dict[str, float]] = []
        self.amat_xi_origin: str | None = None
        self.amat_last = None
        self.amat_dataset_id = f"{self.plans_manager.dataset_name}/{configuration}"

    # -- set-up --------------------------------------------------------------------------
    def initialize(self):
        super().initialize()
        if self.amat_mode == "none":
            self.print_to_log_file(f"amat-hooks: STD baseline ({self.num_epochs} epochs x "
                                   f"{self.num_iterations_per_epoch} iterations)")
            return
        cfg = AdvConfig.from_dict(self.amat_settings.config.to_dict())
        if cfg.mode == "amat":
            cfg.xi, self.amat_xi_origin = self._resolve_xi(cfg)
            if cfg.xi is not None:
                cfg.xi_source = self.amat_xi_origin
        hint = calibrate_command(self.plans_manager.dataset_name, self.configuration_name, self.fold,
                                 self.plans_manager.plans_name)
        policy = cfg.build_policy(dataset_id=self.amat_dataset_id, calibrate_hint=hint, log=self.amat_log)
        self.amat_engine = AdversarialEngine(policy, host=self, pm=get_plugin_manager())
        self.amat_config = cfg
        if cfg.mode == "amat":
            what = (f"xi from {policy.xi_source}, boundary {cfg.boundary} "
                    f"({'Algorithm 1, full-radius PGD' if cfg.boundary == 'none' else 'stop at xi + bisection'}), "
                    f"margins keyed by (case, slice)")
        else:
            what = f"eps {cfg.eps:g} for every sample"
        self.print_to_log_file(f"amat-hooks: {cfg.label} training, settings {cfg.to_json()}, "
                               f"{self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations, {what}")

    def amat_log(self, message: str) -> None:
        """Host protocol: the policy's notices go to nnU-Net's training log."""
        self.print_to_log_file(message)

    def _resolve_xi(self, cfg: AdvConfig) -> tuple[list[float] | None, str]:
        if cfg.xi is not None:
            return cfg.xi, cfg.xi_source or "environment AMAT_XI"
        if self.amat_settings.xi_source == "online":
            return None, "online estimate (AMAT_XI_SOURCE=online)"
        path = self.amat_settings.xi_file or default_xi_path(self.preprocessed_dataset_folder_base,
                                                    self.configuration_name, self.plans_manager.plans_name,
                                                    self.fold)
        if self.amat_settings.xi_source == "auto" and not os.path.isfile(path):
            return None, f"online estimate (no calibration file {path})"
        xi = load_xi_file(path, dataset=self.plans_manager.dataset_name, configuration=self.configuration_name,
                          plans=self.plans_manager.plans_name, fold=self.fold, rule=cfg.xi_rule, n_terms=1)
        return xi, f"calibration file {path}"

    def get_dataloaders(self):
        with slice_reporting_loader():
            return super().get_dataloaders()

    # -- the step ------------------------------------------------------------------------
    def sample_ids(self, batch: dict) -> list[tuple[str, int]]:
        """``(case key, slice)`` per sample (2d); ``(case key, 0)`` for 3d patches."""
        keys = [str(k) for k in batch["keys"]]
        if len(self.configuration_manager.patch_size) != 2:
            return [(k, 0) for k in keys]
        if SLICE_KEY not in batch:
            raise RuntimeError(f"the training batch has no {SLICE_KEY!r}: {type(self).__name__}.get_dataloaders "
                               f"was overridden without slice_reporting_loader(); AMAT needs the slice of "
                               f"every 2D sample to key its margins")
        return [(k, int(s)) for k, s in zip(keys, batch[SLICE_KEY])]

    def train_step(self, batch: dict) -> dict:
        if self.amat_engine is None:  # STD: nnU-Net's step untouched
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        data, target, bad = _replace_non_finite_rows(data, target)
        if bool(bad.any()):
            msg = (f"amat-hooks: {int(bad.sum())} sample(s) with NaN/inf input replaced by a finite sample of "
                   f"the batch; their margins are left unchanged ({[batch['keys'][i] for i in bad.nonzero()[:, 0].tolist()]})")
            self.print_to_log_file(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        ids = self.sample_ids(batch)
        nn_batch = NnUNetBatch(data=data, target=target, ids=ids, bad=bad, trainer=self)
        own_loss = self.loss
        self.loss = _AdversarialLossCall(self, own_loss, nn_batch)
        try:
            # nnU-Net's own step: its .to(device) is a no-op now, so its forward sees `data`.
            return super().train_step({**batch, "data": data, "target": target})
        finally:
            self.loss = own_loss

    # -- per epoch -----------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        if self.amat_engine is None:
            return
        summary = self.amat_engine.epoch_end(self.current_epoch)  # DDP: merges every rank's margins
        if isinstance(self.amat_engine.policy, AMAT):
            xi = summary.get("xi_0", float("nan"))
            values = {"amat_margin_mean": summary["margin_mean"], "amat_margin_min": summary["margin_min"],
                      "amat_margin_max": summary["margin_max"], "amat_xi": xi,
                      "amat_nan_samples": summary.get("nan_samples", 0.0)}
            self._log_series(values)
            self.print_to_log_file(f"AMAT {self.amat_engine.policy.describe()}")
        else:
            self.print_to_log_file(self.amat_engine.policy.describe())

    def _log_series(self, values: dict[str, float]) -> None:
        """Log into nnU-Net's LocalLogger, which only accepts known keys with one value per
        epoch (its plot uses the shortest series): register ours, pad gaps with NaN."""
        store = self.logger.local_logger.my_fantastic_logging
        for key, value in values.items():
            series = store.setdefault(key, [])
            while len(series) < self.current_epoch:
                series.append(float("nan"))
            self.logger.log(key, float(value), self.current_epoch)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0 and self.amat_engine is not None and isinstance(self.amat_engine.policy, AMAT):
            try:
                _plot_margins(self.logger.local_logger.my_fantastic_logging, self.output_folder)
            except Exception as e:  # a plot must never stop training
                self.print_to_log_file(f"amat-hooks: could not draw progress_amat.png: {e}")

    # -- checkpoints ---------------------------------------------------------------------
    def amat_state_dict(self) -> dict[str, Any]:
        policy = self.amat_engine.policy
        xi = policy.xi() if isinstance(policy, AMAT) else None
        return {"version": 1, "trainer": type(self).__name__, "mode": self.amat_mode,
                "dataset_id": self.amat_dataset_id, "settings": self.amat_settings.to_dict(),
                "config": self.amat_config.to_dict(),
                "xi_origin": getattr(policy, "xi_source", None), "boundary": self.amat_config.boundary,
                "xi": None if xi is None else xi.tolist(), "engine": self.amat_engine.state_dict(),
                "history": list(self.amat_history)}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus ``checkpoint['amat_hooks']``, written atomically."""
        if self.local_rank != 0 or self.disable_checkpointing or self.amat_engine is None:
            return super().save_checkpoint(filename)
        tmp = f"{filename}.nnunet-part"
        super().save_checkpoint(tmp)
        try:
            checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
            checkpoint[CHECKPOINT_KEY] = self.amat_state_dict()
            atomic_torch_save(checkpoint, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self.amat_engine is None:
            return
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        where = "the checkpoint" if isinstance(filename_or_checkpoint, dict) else filename_or_checkpoint
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self.print_to_log_file(f"amat-hooks: {where} has no AMAT state (not written by an amat-hooks "
                                   f"trainer); margins start fresh")
            return
        if state.get("mode") != self.amat_mode:
            raise AdversarialCheckpointError(
                f"{where} was trained with -tr {state.get('trainer')} (mode {state.get('mode')!r}); "
                f"continue it with that trainer, not -tr {type(self).__name__}")
        if state.get("dataset_id") != self.amat_dataset_id:
            raise AdversarialCheckpointError(
                f"{where} holds the AMAT margin table of {state.get('dataset_id')!r}, but this run trains "
                f"{self.amat_dataset_id!r}; margins are per sample of one dataset - start this run without "
                f"--c (or point it at the right results folder)")
        try:
            self.amat_engine.load_state_dict(state["engine"], force=force_resume_requested())
        except (MarginMismatchError, ValueError) as e:
            raise AdversarialCheckpointError(
                f"cannot continue from {where}: {env_wording(str(e))} (or start a fresh output folder "
                f"without --c)") from None
        self.amat_history = list(state.get("history") or [])
        policy = self.amat_engine.policy
        if isinstance(policy, AMAT) and state.get("xi") is not None and policy.xi_fixed is not None:
            policy.xi_fixed = torch.tensor(state["xi"], dtype=torch.float32)  # resume exactly
        self.print_to_log_file(f"amat-hooks: restored AMAT state from {where}"
                               + (f": {policy.margins.format_summary()}" if isinstance(policy, AMAT) else ""))


class _AdversarialLossCall:
    """Stands in for ``self.loss`` during one nnU-Net ``train_step``: receives the clean
    output nnU-Net computed and returns the core's ``(L0 + L1) / 2``."""

    def __init__(self, trainer: nnUNetTrainerAdversarial, own_loss, batch: NnUNetBatch) -> None:
        self.trainer, self.own_loss, self.batch = trainer, own_loss, batch

    def __call__(self, output, target):
        self.batch.clean_output = output
        self.batch.extra["own_loss"] = self.own_loss
        out = self.trainer.amat_engine.step(self.trainer.network, self.batch)
        self.trainer.amat_last = out
        return out.loss


def _replace_non_finite_rows(data: Tensor, target) -> tuple[Tensor, Any, Tensor]:
    """Rows with NaN/inf input get a copy of the first finite row (so batch size and DDP
    collectives are unchanged); returns the bool mask of replaced rows."""
    bad = ~torch.isfinite(data.flatten(1)).all(dim=1)
    if not bool(bad.any()):
        return data, target, bad
    good = (~bad).nonzero()[:, 0]
    data = data.clone()
    if good.numel() == 0:
        data[bad] = 0.0
        return data, target, bad
    src = int(good[0])
    data[bad] = data[src].clone()
    if isinstance(target, list):
        target = [t.clone() for t in target]
        for t in target:
            t[bad] = t[src].clone()
    else:
        target = target.clone()
        target[bad] = target[src].clone()
    return data, target, bad


def _plot_margins(log: dict, output_folder: str) -> None:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    n = min(len(log.get(k, [])) for k in LOG_KEYS)
    if n == 0:
        return
    x = list(range(n))
    small = {"font.size": 10, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
             "ytick.labelsize": 9}  # nnU-Net's progress plot sets a global seaborn font scale of 2.5
    with matplotlib.rc_context(small):
        _draw_margins(plt, log, x, n, output_folder)


def _draw_margins(plt, log: dict, x: list[int], n: int, output_folder: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, log["amat_margin_mean"][:n], label="margin mean", color="b")
    ax.fill_between(x, log["amat_margin_min"][:n], log["amat_margin_max"][:n], color="b", alpha=0.15,
                    label="margin min..max")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AMAT margin E (L2)")
    ax.set_title("amat-hooks: per-sample margins and threshold xi per epoch")
    ax2 = ax.twinx()
    ax2.plot(x, log["amat_xi"][:n], color="r", ls="--", label="xi")
    ax2.set_ylabel("xi (nnU-Net loss scale)")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    tmp = os.path.join(output_folder, ".progress_amat.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, os.path.join(output_folder, "progress_amat.png"))
