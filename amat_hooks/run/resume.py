"""What ``amat run`` saves and resumes: its state envelope (``amat_state.json`` in the
checkpoint folder, ``CKPT.amat.json`` beside every checkpoint the script saves), ``--adv-resume``
and the check that the script loaded the weights the resumed margins belong to."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amat_hooks.run.adapter import RunnerError

STATE_NAME = "amat_state.json"
SIDECAR_SUFFIX = ".amat.json"


class RunnerState:
    """The :class:`~amat_hooks.run.host.Runner`'s state, sidecars and resume (a mixin: the
    runner's counters, policy and adapter are its own)."""

    def _check_resumed_weights(self) -> None:
        """After ``--adv-resume``: are the model's weights at the first step those of the
        checkpoint the resumed margins belong to? (The runner restores margins, xi and the
        epoch counter; the weights are the script's to load.)"""
        from amat_hooks.run.checkpoints import CheckpointError, compare_state_dicts, read_state_dict

        pol = self.policy
        what = f"{len(pol.margins)} margins" if pol.name == "amat" else "the adversarial state"
        ckpt = self._resume_checkpoint
        if not ckpt:
            self.warn(f"--adv-resume restored {what} from {self.resumed_from}, which names no checkpoint, so the "
                      f"model's weights cannot be checked against it; make sure the script loaded the weights "
                      f"these margins were trained with", key="resume")
            return
        try:
            saved = read_state_dict(ckpt, trusted=True)
        except CheckpointError as e:
            self.warn(f"--adv-resume: cannot check the model's weights against the checkpoint next to "
                      f"{self.resumed_from}: {e}", key="resume")
            return
        n, differ = compare_state_dicts(self.model.state_dict(), saved)
        if not differ:
            self.amat_log(f"resume: the model's weights at the first step equal {ckpt} ({n} tensors)")
            return
        example = ", ".join(differ[:2])
        self.warn(f"--adv-resume restored {what} from {self.resumed_from}, but the model's weights at the first "
                  f"training step differ from {ckpt} ({len(differ)} of {max(n, len(differ))} tensors, e.g. "
                  f"{example}): the script did not load them, so the margins belong to another model; load that "
                  f"checkpoint in the script (e.g. its --init/--resume option) or start without --adv-resume",
                  key="resume")

    def state(self) -> dict[str, Any]:
        """The state envelope (:func:`amat_hooks.state.state_envelope`) of this run so far."""
        from amat_hooks.state import state_envelope

        t = self.total
        return state_envelope(
            "runner", self.config, self.policy, self.adapter, epochs=self.epochs_done, checkpoint=self.last_checkpoint,
            history=self.amat_history,
            host_state={"script": self.script, "resumed_from": self.resumed_from, "batch": self.batch_mode,
                        "input_shape": self.input_shape, "checkpoint_epochs": self.checkpoint_epochs,
                        "stats": {"steps": t.steps, "batches": t.batches, "rows_fed": t.rows,
                                  "mean_noise_norm": t.noise_sum / t.noise_rows if t.noise_rows else None}})

    @property
    def epochs_done(self) -> int:
        """Epochs finished, counting a pass whose last batch trained but whose epoch line is due."""
        return self.epoch + (1 if self._pass_done else 0)

    def clean_stale_temps(self, folder: Path) -> None:
        """Remove the temporary files an interrupted write left in ``folder`` (say so)."""
        from amat_hooks.atomic_files import remove_stale_temps

        removed = remove_stale_temps(folder)
        if removed:
            self.amat_log(f"removed {len(removed)} temporary file(s) an interrupted write left in {folder}: "
                          + ", ".join(p.name for p in removed))

    last_state_path: Path | None = None   # the last state written (what a Ctrl-C leaves to resume from)
    saved_epochs: int = 0                 # epochs finished when it was written

    def write_state(self, path: Path) -> Path:
        from amat_hooks.state import write_state

        out = write_state(path, self.state())
        if Path(path).name == STATE_NAME:
            self.last_state_path, self.saved_epochs = out, self.epochs_done
        return out

    def load_state(self, path: str | Path, force: bool = False) -> None:
        from amat_hooks.state import StateError, read_state

        path = Path(path)
        if not path.is_file():
            raise RunnerError(f"--adv-resume: {path} does not exist; point it at a {STATE_NAME} or "
                              f"*{SIDECAR_SUFFIX} written by amat run")
        try:
            state = read_state(path)
            if state.get("host") != "runner":
                raise StateError(f"{path} was written by the {state.get('host')} integration, not by amat run")
            # settings that depend on the kind of trainer (known at the first batch) are checked
            # here under the kind the state was trained with, and again once the adapter says it
            saved_kind = (state.get("config") or {}).get("kind")
            probe = self.policy if not saved_kind else \
                self.config.resolved(saved_kind).build_policy(log=lambda message: None)
            probe.load_state_dict(state["policy"], force=force)
            if probe is not self.policy:  # checked above; the kind's own policy loads it again at batch 1
                self.policy.load_state_dict(state["policy"], force=True)
        except (StateError, ValueError) as e:
            raise RunnerError(f"--adv-resume: {e}") from None
        self._resume_state, self._resume_force = state["policy"], force
        hs = state.get("host_state") or {}
        saved_with = hs.get("checkpoint_epochs")
        if (not path.name.endswith(SIDECAR_SUFFIX) and state.get("checkpoint") and saved_with is not None
                and saved_with != state.get("epochs") and not force):
            raise RunnerError(f"--adv-resume: {path} holds the margins after epoch {state.get('epochs')}, but its "
                              f"checkpoint {state['checkpoint']} was saved after epoch {saved_with} (the run stopped "
                              f"before its next save): resume with {state['checkpoint']}{SIDECAR_SUFFIX}, the state "
                              f"saved with those weights")
        self.epoch = int(state.get("epochs", 0))
        self.resumed_from = str(path)
        stats = hs.get("stats") or {}
        self.total.steps = int(stats.get("steps") or 0)
        self.total.batches = int(stats.get("batches") or 0)
        self.total.rows = int(stats.get("rows_fed") or 0)
        self.amat_history = [dict(h) for h in state["history"]]
        if path.name.endswith(SIDECAR_SUFFIX):
            self._resume_checkpoint = str(path.with_name(path.name[:-len(SIDECAR_SUFFIX)]))
        else:
            self._resume_checkpoint = state.get("checkpoint")
        table = (f"{len(self.policy.margins)} margins (digest {self.policy.margins.digest()})"
                 if self.policy.name == "amat" else "no margins")
        self.amat_log(f"resumed from {path}: epoch {self.epoch}, {table}; weights: the script's to load, "
                      f"checked at the first step")

    def after_save(self, f: Any) -> None:
        """Called after the script's torch.save: write the sidecar next to the checkpoint."""
        if not isinstance(f, (str, os.PathLike)):
            return
        p = Path(f).absolute()  # the state names its checkpoint wherever a resume starts from
        if p.name.endswith(SIDECAR_SUFFIX) or p.name == STATE_NAME:
            return
        if self._pass_done and not _distributed():
            self.end_of_pass()  # the pass's epoch line and history before its checkpoint (one process only:
            # under DDP only rank 0 saves, and the epoch's margin merge is a collective of every rank)
        self.flush(final=False)  # margins of every batch trained so far belong with these weights
        if self.checkpoint_dir != p.parent:
            self.clean_stale_temps(p.parent)
        self.checkpoint_dir = p.parent
        self.last_checkpoint = str(p)
        self.checkpoint_epochs = self.epochs_done
        self.write_state(p.with_name(p.name + SIDECAR_SUFFIX))
        self.write_state(p.parent / STATE_NAME)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
