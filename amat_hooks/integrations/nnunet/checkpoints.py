"""What the nnU-Net trainer saves and continues: ``checkpoint['amat_hooks']`` (the state
envelope) in every checkpoint nnU-Net writes, written atomically, and ``--c``'s restore, which
refuses margins of another mode, dataset or setting in variable names (a mixin of
:class:`~amat_hooks.integrations.nnunet.trainer.AMATTrainerMixin`)."""
from __future__ import annotations

import os
from typing import Any, Union

import torch

from amat_hooks.atomic_files import atomic_torch_save
from amat_hooks.config import env_wording, force_resume_requested
from amat_hooks.margins import MarginMismatchError
from amat_hooks.policies import AMAT
from amat_hooks.state import CHECKPOINT_KEY, StateError, read_state, state_envelope


class AdversarialCheckpointError(RuntimeError):
    """A checkpoint's AMAT state does not fit this run."""


class AMATCheckpoints:
    """Checkpoint save / load of the adversarial trainer (its engine, settings and log are the trainer's)."""

    def amat_state_dict(self) -> dict[str, Any]:
        """The state envelope stored as ``checkpoint['amat_hooks']``."""
        return state_envelope("nnunet", self.amat_config, self.amat_engine.policy, self.amat_adapter,
                              epochs=self.current_epoch + 1, history=self.amat_history,
                              host_state={"trainer": type(self).__name__, "mode": self.amat_mode,
                                          "dataset_id": self.amat_dataset_id, "settings": self.amat_settings.to_dict()})

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus ``checkpoint['amat_hooks']``, written atomically."""
        if os.path.basename(filename) == "checkpoint_latest.pth" and not self.disable_checkpointing:
            self.amat_latest_epoch = self.current_epoch + 1
        if self.local_rank != 0 or self.disable_checkpointing or self.amat_engine is None:
            return super().save_checkpoint(filename)
        tmp = f"{filename}.nnunet-part"
        checkpoint = self._nnunet_checkpoint(tmp)
        try:
            if checkpoint is None:  # nnU-Net wrote no checkpoint
                return
            checkpoint[CHECKPOINT_KEY] = self.amat_state_dict()
            atomic_torch_save(checkpoint, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _nnunet_checkpoint(self, tmp: str) -> dict | None:
        """The dict nnU-Net's ``save_checkpoint`` builds, taken from its ``torch.save(checkpoint,
        tmp)`` call instead of written to disk and read back (a checkpoint is written every
        epoch of a short run: this saves one write and one read of the whole file each time).
        Should a future nnU-Net write it another way, the file it wrote is read back."""
        captured: list[dict] = []
        real_save = torch.save

        def take(obj, f, *args, **kwargs):
            if not captured and isinstance(f, (str, os.PathLike)) and os.fspath(f) == tmp:
                captured.append(obj)
                return None
            return real_save(obj, f, *args, **kwargs)

        torch.save = take
        try:
            super().save_checkpoint(tmp)
        finally:
            torch.save = real_save
        if captured:
            return captured[0]
        if os.path.isfile(tmp):
            return torch.load(tmp, map_location="cpu", weights_only=False)
        return None

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.amat_loaded_from = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "checkpoint"
        where = "the checkpoint" if isinstance(filename_or_checkpoint, dict) else filename_or_checkpoint
        if isinstance(filename_or_checkpoint, str):
            self._warn_if_best_fallback(filename_or_checkpoint)
        if self.amat_engine is None:
            return
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)  # as nnU-Net loads it
        if CHECKPOINT_KEY not in checkpoint:
            self.print_to_log_file(f"amat-hooks: {where} has no AMAT state (not written by an amat-hooks "
                                   f"trainer); margins start fresh")
            return
        with self._amat_errors():
            try:
                state = read_state(checkpoint, where=where)
            except StateError as e:
                raise AdversarialCheckpointError(str(e)) from None
            self._restore(state, where)
        policy = self.amat_engine.policy
        table = (f": {policy.margins.format_summary()}, table sha256 "
                 f"{policy.margins.digest()}") if isinstance(policy, AMAT) else ""
        self.print_to_log_file(f"amat-hooks: restored AMAT state from {where} (continues at epoch "
                               f"{self.current_epoch}){table}")

    def _warn_if_best_fallback(self, filename: str) -> None:
        """nnU-Net's ``--c`` takes checkpoint_final, else checkpoint_latest, else checkpoint_best."""
        folder = os.path.dirname(filename)
        if os.path.basename(filename) != "checkpoint_best.pth" or any(
                os.path.isfile(os.path.join(folder, f)) for f in ("checkpoint_final.pth", "checkpoint_latest.pth")):
            return
        self.print_to_log_file(
            f"amat-hooks: WARNING: continuing from checkpoint_best.pth (epoch {self.current_epoch}) because there "
            f"is no checkpoint_latest.pth: the epochs after the best one are trained again and their margin "
            f"updates are lost. AMAT_SAVE_EVERY=1 writes checkpoint_latest.pth after every epoch")

    def _restore(self, state: dict, where: str) -> None:
        force = force_resume_requested()
        hs = state.get("host_state") or {}
        if hs.get("mode") != self.amat_mode:
            raise AdversarialCheckpointError(
                f"{where} was trained with -tr {hs.get('trainer')} (mode {hs.get('mode')!r}); "
                f"continue it with -tr {hs.get('trainer')}, or train -tr {type(self).__name__} from scratch "
                f"without --c (in a fresh output folder: set nnUNet_results to another folder to keep this one)")
        if hs.get("dataset_id") != self.amat_dataset_id and not force:
            raise AdversarialCheckpointError(
                f"{where} holds the AMAT margin table of {hs.get('dataset_id')!r}, but this run trains "
                f"{self.amat_dataset_id!r}; margins are per sample of one dataset - start this run without "
                f"--c in a fresh output folder (or point nnUNet_results at the right results folder), or "
                f"set AMAT_FORCE_RESUME=1 to continue anyway")
        try:
            self.amat_engine.policy.load_state_dict(state["policy"], force=force)
        except (MarginMismatchError, ValueError) as e:
            raise AdversarialCheckpointError(self._refusal(where, state, e)) from None
        if force:
            self.print_to_log_file("amat-hooks: AMAT_FORCE_RESUME=1: the saved margins are continued under this "
                                   "run's settings")
        self.amat_history = list(state.get("history") or [])
        policy = self.amat_engine.policy
        if isinstance(policy, AMAT) and state.get("xi") is not None and policy.xi_fixed is not None:
            policy.xi_fixed = torch.tensor(state["xi"], dtype=torch.float32)  # resume exactly

    def _refusal(self, where: str, state: dict, error: Exception) -> str:
        """Why ``--c`` cannot continue, in variable names, and what the user can do."""
        saved = dict((state.get("config") or {}))
        saved_delta = saved.get("delta")
        saved_boundary = saved.get("boundary")
        match = []
        if self.amat_mode == "amat" and saved_delta is not None and float(saved_delta) != self.amat_config.delta:
            match.append(f"AMAT_STEP={float(saved_delta):g}")
        if self.amat_mode == "amat" and saved_boundary != self.amat_config.boundary:
            match.append(f"AMAT_BOUNDARY={saved_boundary}")
        now = " ".join(f"{m.split('=')[0]}={self._current(m.split('=')[0])}" for m in match)
        options = []
        if match:
            options.append(f"rerun with {' '.join(match)} (what the saved margins were trained with)")
        options.append("set AMAT_FORCE_RESUME=1 to continue the saved margins under this run's settings"
                       + (f" ({now})" if now else ""))
        options.append("or start from scratch without --c in a fresh output folder (set nnUNet_results to "
                       "another folder; without --c this folder's checkpoints are overwritten)")
        what = env_wording(str(error))
        for advice in (". Start a fresh run", "; resume with"):  # the core's own advice: replaced below
            what = what.split(advice)[0]
        return f"cannot continue from {where}: {what.rstrip('. ')}. What you can do: " + "; ".join(options)

    def _current(self, variable: str) -> str:
        return {"AMAT_STEP": f"{self.amat_config.delta:g}", "AMAT_BOUNDARY": self.amat_config.boundary}[variable]
