"""AMAT / SAT / STD inside nnU-Net's own step: :class:`AMATTrainerMixin`, and the base class
of nnUNetTrainerAMAT / SAT / STD (``nnUNetTrainerAdversarial = AMATTrainerMixin + nnUNetTrainer``).

How the step is wired: ``train_step`` temporarily replaces ``self.loss`` by a callable and
calls nnU-Net's unmodified ``train_step``. nnU-Net moves the batch, zeroes gradients, runs
the clean forward under its autocast, calls "the loss" - our callable, which hands the
batch to the core (:class:`AdversarialEngine`: clean loss from nnU-Net's own loss object on
that very output, PGD with the margins, noisy forward, ``(L0 + L1) / 2``, margin update) -
and then does its own backward, grad-scaler, ``clip_grad_norm_(12)`` and optimizer step.
So autocast, clipping, deep supervision and ``self.loss`` stay nnU-Net's - or those of a
user's own trainer: ``class MyTrainerAMAT(AMATTrainerMixin, MyTrainer)`` (docs/nnunet.md).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Iterator

from amat_hooks.integrations.nnunet.compat import NnUNetVersionError, check_nnunet_version

try:
    check_nnunet_version()
except NnUNetVersionError as _e:  # one line before Python's traceback, as for every setting
    print(f"amat-hooks: error: {_e}", file=sys.stderr, flush=True)
    raise

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from amat_hooks.config import AdvConfig, AdvConfigError, env_wording
from amat_hooks.engine import AdversarialEngine
from amat_hooks.integrations.nnunet.adapter import NnUNetAdapter, NnUNetBatch, replace_non_finite_rows
from amat_hooks.integrations.nnunet.checkpoints import AdversarialCheckpointError, AMATCheckpoints
from amat_hooks.policies import AMAT
from amat_hooks.state import CHECKPOINT_KEY
from amat_hooks.integrations.nnunet.loader import SLICE_KEY, slice_reporting_loader
from amat_hooks.integrations.nnunet.names import parse_trainer_name, trainer_name
from amat_hooks.integrations.nnunet.settings import (calibrate_command, comparable_settings, default_xi_path,
                                                     delta_note, format_setting, load_xi_file, overwrite_requested,
                                                     read_settings, save_interval, settings_difference)

#: Extra per-epoch series in nnU-Net's logger (one value per epoch, like nnU-Net's own).
LOG_KEYS = ("amat_margin_mean", "amat_margin_min", "amat_margin_max", "amat_xi", "amat_nan_samples")


#: Prefix of the one-line reason a failed run prints to stderr and its training log.
ERROR_PREFIX = "amat-hooks: error: "
#: Settings a user sets for ``nnUNetv2_train``: the problems we can name before nnU-Net's traceback.
_USER_ERRORS = (AdvConfigError, AdversarialCheckpointError)


class AMATTrainerMixin(AMATCheckpoints):
    """AMAT / SAT / STD for any nnU-Net trainer: ``class MyTrainerAMAT(AMATTrainerMixin,
    MyTrainer)`` (the mixin first) trains ``MyTrainer`` - its network, loss, optimizer,
    augmentation - with adversarial noise inside its own ``train_step``.

    Class attributes say what the class trains: ``amat_mode`` (``"amat"``, ``"sat"`` or
    ``"none"``) and, optionally, ``amat_step`` (Delta), ``amat_eps`` (SAT's noise level),
    ``amat_epochs``; what they leave open comes from ``AMAT_*`` variables (docs/nnunet.md),
    and a variable that contradicts them is refused. What the mixin needs from ``MyTrainer``:
    its ``train_step`` computes the loss as ``self.loss(output, target)`` (nnU-Net's does),
    its loaders come from nnU-Net's ``get_dataloaders`` (2d: the slice of every sample), and
    overridden ``save_checkpoint`` / ``load_checkpoint`` / ``on_train_start`` call ``super()``.
    """

    amat_mode = "amat"
    amat_step: float | None = None
    amat_eps: float | None = None
    amat_epochs: int | None = None
    amat_is_nnunet = True  # lets the plugin recognise its host without importing nnU-Net

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for k in cls.__mro__[1:]:  # the mixin must come before every plain nnU-Net trainer
            if k is AMATTrainerMixin:
                break
            if issubclass(k, nnUNetTrainer) and not issubclass(k, AMATTrainerMixin):
                raise TypeError(f"{cls.__name__}: put AMATTrainerMixin before {k.__name__} in the bases, "
                                f"class {cls.__name__}(AMATTrainerMixin, {k.__name__}); after it, {k.__name__}'s "
                                f"methods would run instead of the adversarial step")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if not isinstance(self, nnUNetTrainer):
            raise TypeError(f"{type(self).__name__}: AMATTrainerMixin goes with an nnU-Net trainer, "
                            f"class {type(self).__name__}(AMATTrainerMixin, nnUNetTrainer)")
        super().__init__(plans, configuration, fold, dataset_json, device)
        with self._amat_errors():  # the training log exists now: a bad setting is written into it
            self.amat_settings = read_settings(self.amat_mode, self.plans_manager.dataset_name,
                                               trainer_name=type(self).__name__,
                                               fixed={"delta": self.amat_step, "eps": self.amat_eps,
                                                      "epochs": self.amat_epochs})
        if self.amat_settings.epochs:
            self.num_epochs = self.amat_settings.epochs
        if self.amat_settings.iters:
            self.num_iterations_per_epoch = self.amat_settings.iters
        if self.amat_settings.val_iters:
            self.num_val_iterations_per_epoch = self.amat_settings.val_iters
        self.amat_engine: AdversarialEngine | None = None
        self.amat_history: list[dict[str, float]] = []
        self.amat_xi_origin: str | None = None
        self.amat_last = None
        self.amat_dataset_id = f"{self.plans_manager.dataset_name}/{configuration}"
        self.amat_config: AdvConfig | None = None
        self.amat_latest_epoch: int | None = None  # epochs done when checkpoint_latest.pth was last written
        self.amat_loaded_from: str | None = None  # the checkpoint --c (or amat eval) loaded

    # -- failures ------------------------------------------------------------------------
    def amat_report_failure(self, reason: str) -> None:
        """One line to stderr (before the traceback Python prints) and into the training log."""
        line = ERROR_PREFIX + " ".join(str(reason).split())
        print(line, file=sys.stderr, flush=True)
        try:
            self.print_to_log_file(line, also_print_to_console=False)
        except Exception:  # the log is a convenience; the error itself must surface
            pass

    @contextlib.contextmanager
    def _amat_errors(self, kinds: tuple[type[BaseException], ...] = _USER_ERRORS) -> Iterator[None]:
        try:
            yield
        except kinds as e:
            if not getattr(e, "amat_reported", False):
                self.amat_report_failure(str(e))
                e.amat_reported = True
            raise

    # -- set-up --------------------------------------------------------------------------
    def initialize(self):
        if self.amat_settings.seed is not None:  # before nnU-Net builds the network and its loaders
            _seed_everything(self.amat_settings.seed)
        super().initialize()
        if self.amat_mode == "none":
            return
        with self._amat_errors((AdvConfigError, AdversarialCheckpointError, ValueError)):
            self._amat_initialize()

    def _amat_initialize(self) -> None:
        cfg = AdvConfig.from_dict(self.amat_settings.config.to_dict())
        if cfg.mode == "amat":
            cfg.xi, self.amat_xi_origin = self._resolve_xi(cfg)
            if cfg.xi is not None:
                cfg.xi_source = self.amat_xi_origin
        hint = calibrate_command(self.plans_manager.dataset_name, self.configuration_name, self.fold,
                                 self.plans_manager.plans_name)
        try:
            policy = cfg.build_policy(dataset_id=self.amat_dataset_id, calibrate_hint=hint, log=self.amat_log)
        except (AdvConfigError, ValueError) as e:
            raise AdvConfigError(env_wording(str(e))) from None
        self.amat_adapter = NnUNetAdapter(self.loss, self.enable_deep_supervision, calibrate_hint=hint)
        self.amat_adapter.configure(cfg)
        self.amat_engine = AdversarialEngine(policy, self.amat_adapter, host=self)
        self.amat_log(f"adapter: {self.amat_adapter.describe()}")
        self.amat_config = cfg

    def on_train_start(self):
        with self._amat_errors():  # before nnU-Net writes anything into the output folder
            self._amat_check_output_folder()
        super().on_train_start()
        self.save_every = save_interval(self.amat_settings, self.num_epochs, self.save_every)
        self.print_to_log_file(self.amat_startup_line())

    # -- one results folder, one setting ---------------------------------------------------
    def _amat_check_output_folder(self) -> None:
        """A run that starts from scratch (no ``--c``) into a folder whose checkpoint was
        trained with other settings would overwrite it silently: refuse, unless AMAT_OVERWRITE=1."""
        if self.amat_loaded_from is not None or not self.output_folder:
            return
        found = next((os.path.join(self.output_folder, f) for f in
                      ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
                      if os.path.isfile(os.path.join(self.output_folder, f))), None)
        if found is None:
            return
        try:
            state = torch.load(found, map_location="cpu", weights_only=False).get(CHECKPOINT_KEY)
        except Exception:  # not a checkpoint we can read: nnU-Net's own business
            return
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            return  # no AMAT state: a clean run (STD) or another trainer's; nothing to compare
        saved_settings = ((state.get("host_state") or {}).get("settings") or {})
        saved = comparable_settings(state["config"], saved_settings.get("seed"))
        now = comparable_settings(self.amat_settings.config.to_dict(), self.amat_settings.seed)
        diff = settings_difference(saved, now)
        if not diff:
            return
        was = " ".join(format_setting(k, a) for k, a, _ in diff)
        new = " ".join(format_setting(k, b) for k, _, b in diff)
        if overwrite_requested():
            self.print_to_log_file(f"amat-hooks: AMAT_OVERWRITE=1: replacing the run in {self.output_folder} "
                                   f"trained with {was} by this run's {new}")
            return
        raise AdversarialCheckpointError(
            f"{self.output_folder} already holds a run trained with {was} ({os.path.basename(found)}); this run "
            f"has {new} and would overwrite it. Keep both: {self._amat_own_name_hint(diff)}, or set "
            f"nnUNet_results to another folder; continue the saved run with its settings ({was}) and --c; or set "
            f"AMAT_OVERWRITE=1 to replace it")

    def _amat_own_name_hint(self, diff: list) -> str:
        """The ``-tr`` name that gives this run its own folder, where a name can carry the difference."""
        keys = {k for k, _, _ in diff}
        spec = None
        try:
            spec = parse_trainer_name(type(self).__name__)
        except AdvConfigError:
            pass
        cfg = self.amat_settings.config
        if spec is not None and keys <= ({"AMAT_STEP"} if cfg.mode == "amat" else {"AMAT_EPS"}):
            name = trainer_name(spec.base, step=cfg.delta if cfg.mode == "amat" else None,
                                eps=cfg.eps if cfg.mode == "sat" else None, epochs=spec.epochs)
            return f"train it under its own name, -tr {name}"
        return (f"train it under its own trainer name (a subclass of {type(self).__name__}, "
                f"docs/nnunet.md 'Your own trainer')")

    def amat_startup_line(self) -> str:
        """What this run trains, printed once when training starts (not when a model is only
        loaded, as ``amat calibrate`` / ``amat eval`` do)."""
        budget = (f"{self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations"
                  + (f", continuing at epoch {self.current_epoch}" if self.current_epoch else "")
                  + f", checkpoint_latest.pth every {self.save_every} epoch{'s' if self.save_every != 1 else ''}")
        cfg = self.amat_config
        if self.amat_engine is None or cfg is None:
            return f"amat-hooks: STD baseline (clean nnU-Net training), {budget}"
        trainer = type(self).__name__
        pgd = (f"{cfg.pgd_steps} L2 PGD steps of "
               + (f"{cfg.pgd_step_size:g}" if cfg.pgd_step_size else f"{cfg.alpha:g} * radius / {cfg.pgd_steps}"))
        if cfg.mode == "sat":
            return (f"amat-hooks: {cfg.label} training ({trainer}), noise of radius eps {cfg.eps:g} for every sample "
                    f"({pgd}), {cfg.protocol} protocol, {budget}")
        policy = self.amat_engine.policy
        what = ("Algorithm 1, full-radius PGD" if cfg.boundary == "none" else "stop at xi + bisection")
        delta = delta_note(self.amat_settings, self.plans_manager.dataset_name, trainer)
        return (f"amat-hooks: {cfg.label} training ({trainer}), {delta}, {cfg.protocol} protocol, settings "
                f"{cfg.to_json()}, {budget}, xi from "
                f"{policy.xi_source}, boundary {cfg.boundary} ({what}), {pgd}, margins keyed by (case, slice)")

    def amat_log(self, message: str) -> None:
        """Host protocol: the policy's notices go to nnU-Net's training log."""
        self.print_to_log_file(message)

    def _resolve_xi(self, cfg: AdvConfig) -> tuple[list[float] | None, str]:
        if cfg.xi is not None:
            return cfg.xi, cfg.xi_source or "environment AMAT_XI"
        if cfg.terms == "authors":  # the Dice acceptance: the authors' published mean training Dice
            preset = cfg.with_xi_preset(self.plans_manager.dataset_name)
            if preset.xi is None:
                raise AdvConfigError(f"AMAT_TERMS=authors (Dice acceptance) has published thresholds for Heart, "
                                     f"Hippocampus and Prostate only, not {self.plans_manager.dataset_name}; set "
                                     f"AMAT_XI=1e30,<1 - the clean model's mean training Dice> or AMAT_TERMS=trainer")
            return preset.xi, preset.xi_source
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

    def run_training(self):
        try:
            super().run_training()
        except KeyboardInterrupt:
            self.amat_report_failure(f"interrupted in epoch {self.current_epoch}; " + self._continue_hint())
            raise
        except Exception as e:
            if not getattr(e, "amat_reported", False):
                self.amat_report_failure(f"training stopped in epoch {self.current_epoch}: "
                                         f"{type(e).__name__}: {e}")
                e.amat_reported = True
            raise

    def _continue_hint(self) -> str:
        if self.amat_latest_epoch is not None:
            return (f"the same nnUNetv2_train command with --c continues from checkpoint_latest.pth "
                    f"(written after epoch {self.amat_latest_epoch - 1})")
        return ("no checkpoint_latest.pth was written in this run (AMAT_SAVE_EVERY); --c would continue from "
                "checkpoint_final.pth, else checkpoint_best.pth, else start again")

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
        data, target, bad = replace_non_finite_rows(data, target)
        if bool(bad.any()):
            msg = (f"amat-hooks: {int(bad.sum())} sample(s) with NaN/inf input replaced by a finite sample of "
                   f"the batch; their margins are left unchanged ({[batch['keys'][i] for i in bad.nonzero()[:, 0].tolist()]})")
            self.print_to_log_file(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        nn_batch = NnUNetBatch(data=data, target=target, ids=self.sample_ids(batch), bad=bad)
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
                from amat_hooks.evaluation.figures import plot_training_margins

                log = self.logger.local_logger.my_fantastic_logging
                n = min(len(log.get(k, [])) for k in LOG_KEYS)
                plot_training_margins({k[len("amat_"):]: log[k][:n] for k in LOG_KEYS},
                                      os.path.join(self.output_folder, "progress_amat.png"),
                                      xi_label="xi (nnU-Net loss scale)")
            except Exception as e:  # a plot must never stop training
                self.print_to_log_file(f"amat-hooks: could not draw progress_amat.png: {e}")

class nnUNetTrainerAdversarial(AMATTrainerMixin, nnUNetTrainer):
    """nnU-Net's own trainer with STD/SAT/AMAT training chosen by the subclass (``amat_mode``):
    the base of every ``-tr`` class amat-hooks gives nnU-Net (:mod:`.trainers`)."""


class _AdversarialLossCall:
    """Stands in for ``self.loss`` during one nnU-Net ``train_step``: receives the clean
    output nnU-Net computed and returns the core's ``(L0 + L1) / 2``."""

    def __init__(self, trainer: AMATTrainerMixin, own_loss, batch: NnUNetBatch) -> None:
        self.trainer, self.own_loss, self.batch = trainer, own_loss, batch

    def __call__(self, output, target):
        self.batch.clean_output = output
        self.batch.extra["own_loss"] = self.own_loss
        out = self.trainer.amat_engine.step(self.trainer.network, self.batch)
        self.trainer.amat_last = out
        return out.loss


def _seed_everything(seed: int) -> None:
    """``AMAT_SEED``: network initialisation, batch sampling and augmentation in this process
    (with ``nnUNet_n_proc_DA=0`` that is all of it) follow the seed."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
