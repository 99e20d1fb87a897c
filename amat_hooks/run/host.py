"""The host of ``amat run``: what happens to each training batch of the script that a
patched DataLoader fetches while the model trains (:mod:`.patches`). The first time, the
plugins say which :class:`~amat_hooks.adapter.BatchAdapter` fits (hook ``amat_adapter``);
then the core attacks the B clean rows (``AdversarialEngine.attack``) and the script gets
ONE batch of 2B rows, clean then noisy, targets repeated, so its own loss computes
``(L_clean + L_noisy) / 2``; :mod:`.split` runs them as two forward passes (or one) and keeps
both outputs; before the script's optimizer step their per-sample terms
(``adapter.output_terms``) go to ``AdversarialEngine.observe`` (Algorithm 1 lines 9-12, no
extra forward). Saving and resuming: :mod:`.resume`; the model and loss: :mod:`.discovery`.
"""
from __future__ import annotations

import contextlib
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from amat_hooks.adapter import AdapterError, BatchAdapter
from amat_hooks.run.adapter import RunnerError, unknown_structure
from amat_hooks.run.ids import batch_rows
from amat_hooks.run.discovery import ScriptModels
from amat_hooks.run.resume import STATE_NAME, RunnerState
from amat_hooks.run.split import BATCH_MODES, ForwardHooks, PendingBatch, model_device, move_to



class _Counts:
    __slots__ = ("batches", "rows", "steps", "noise_sum", "noise_rows")

    def __init__(self) -> None:
        self.batches = self.rows = self.steps = self.noise_rows = 0
        self.noise_sum = 0.0


class Runner(ScriptModels, RunnerState):
    """Host object for adapters during ``amat run`` (adapters recognise it by type).

    ``options``: the parsed ``amat run`` flags (adapters read their own, e.g. the landmark
    adapter's ``heatmap_loss``); keyword arguments not named here are set on it.
    ``batch_mode``: ``"split"`` (clean and noisy rows as two forward passes, the default) or
    ``"joint"`` (one forward of 2B rows).
    """

    def __init__(self, config: Any, pm: Any = None, options: Any = None, out_dir: str | Path | None = None,
                 verbose: bool = True, batch_mode: str = "split", **adapter_options: Any) -> None:
        from amat_hooks.plugins import get_plugin_manager

        if batch_mode not in BATCH_MODES:
            raise RunnerError(f"unknown --adv-batch {batch_mode!r}; choose one of {', '.join(BATCH_MODES)}")
        self.config = config.validate()
        self.pm = pm or get_plugin_manager()
        self.options = options if options is not None else SimpleNamespace()
        for k, v in adapter_options.items():
            setattr(self.options, k, v)
        self.batch_mode = batch_mode
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.verbose = verbose
        self.amat_history: list[dict[str, float]] = []
        self.policy = self.config.build_policy(calibrate_hint="amat calibrate <task>", log=self.amat_log)
        self.engine: Any = None                      # AdversarialEngine, once the adapter is known
        # what the patches found
        self.model: nn.Module | None = None
        self._modules: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
        self._optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self.loss_modules: list[nn.Module] = []      # the script's torch.nn loss modules, in creation order
        self.loss_calls: list[nn.Module] = []        # ... that it called on a training output (first batch)
        self.recording_losses = False
        self.internal = False                        # True while the runner runs the model itself
        self.hooks = ForwardHooks(self)
        # the adapter of the script's batches, asked once
        self.adapter: BatchAdapter | None = None
        self._adapter_asked = False
        self._confirmed = False
        self.pending: list[PendingBatch] = []
        self.input_shape: list[int] | None = None
        self.epoch = 0
        self.total = _Counts()
        self.this_epoch = _Counts()
        self._since_step = 0                         # attacked batches since the last optimizer step
        self.checkpoint_dir: Path | None = None
        self.last_checkpoint: str | None = None
        self.checkpoint_epochs: int | None = None     # epochs finished when last_checkpoint was saved
        self.script: str | None = None
        self.resumed_from: str | None = None
        self._resume_checkpoint: str | None = None
        self._warned: set[str] = set()
        self.refused: str | None = None              # why a RunnerError ended the run (then: no state)
        self.interrupted = False                     # Ctrl-C: the partial pass is not an epoch
        self._pass_done = False                      # a pass ended; the epoch closes before the next batch
        self._resume_state: dict | None = None       # the --adv-resume policy state (applied again at batch 1)
        self._resume_force = False

    # -- Host protocol -------------------------------------------------------------------------
    def amat_log(self, message: str) -> None:
        """``[amat] message`` on stdout (above an active tqdm bar, not into it)."""
        if self.verbose:
            _emit(f"[amat] {message}", sys.stdout)

    def warn(self, message: str, key: str | None = None) -> None:
        """``amat run: warning: message`` on stderr, once per ``key``."""
        if key is not None:
            if key in self._warned:
                return
            self._warned.add(key)
        _emit(f"amat run: warning: {message}", sys.stderr)

    # -- counters (read by tests, docs and the final line) ------------------------------------
    @property
    def batches_seen(self) -> int:
        return self.total.batches

    @property
    def steps(self) -> int:
        return self.total.steps

    @contextlib.contextmanager
    def running_model(self) -> Iterator[None]:
        """The runner's own forwards (attack, terms): not the script's, not split, not counted."""
        prev, self.internal = self.internal, True
        try:
            yield
        finally:
            self.internal = prev

    # -- the batch path -------------------------------------------------------------------------
    def process(self, data: Any, ids: list | None) -> Any:
        """Clean batch of B rows -> the batch the script sees (2B rows for SAT/AMAT)."""
        try:
            return self._process(data, ids)
        except RunnerError as e:
            self.refused = str(e)
            raise

    def _process(self, data: Any, ids: list | None) -> Any:
        if self._pass_done:
            self.end_of_pass()
        self.hooks.reset()
        self.flush(final=False)
        rows = len(ids) if ids is not None else batch_rows(data) or 0
        if not self._adapter_asked:
            self._first_batch(data)
        pol = self.policy
        if pol.name == "none":
            self._count(rows)
            return data
        if ids is None and pol.name == "amat":
            raise RunnerError("AMAT keeps one margin per sample, but the training DataLoader reads an "
                              "IterableDataset, which has no sample indices; use a map-style Dataset "
                              "(__getitem__/__len__) or train with --adv sat")
        adapter = self.adapter
        try:
            with torch.enable_grad(), self.running_model():
                x = adapter.inputs(data)
                src, dev = x.device, model_device(self.model)
                moved = dev is not None and dev != src  # the script moves batches later (img.cuda())
                if moved:
                    data = move_to(data, dev)
                    x = adapter.inputs(data)
                own = adapter.ids(data)  # the adapter's ids (e.g. YOLOv5's primary image) win over the loader's
                try:  # the engine's refusals (ids, xi) name their problem themselves
                    pert = self.engine.attack(self.model, data, ids=own if own is not None else ids)
                except AdapterError as e:
                    raise RunnerError(str(e)) from None
                both = torch.cat([x, pert.x_adv.to(dtype=x.dtype, device=x.device)], dim=0)
                out = adapter.with_inputs(data, both)
                if moved:  # hand the script its batch where it was
                    out = move_to(out, src)
        except AdapterError as e:
            raise RunnerError(unknown_structure(f"{adapter.describe()}: {e}")) from None
        b = int(x.shape[0])
        self.pending.append(PendingBatch(data, pert, b, tuple(both.shape)))
        if pert.attack is not None:
            norm_sum, norm_rows = float(pert.attack.noise_norm.sum()), int(pert.attack.noise_norm.numel())
            for c in (self.total, self.this_epoch):
                c.noise_sum += norm_sum
                c.noise_rows += norm_rows
        self._count(2 * b)
        return out

    def _count(self, fed: int) -> None:
        for c in (self.total, self.this_epoch):
            c.batches += 1
            c.rows += fed
        self._since_step += 1

    def _first_batch(self, data: Any) -> None:
        """Once: the adapter of the script's batches, the input shape, the resume check."""
        from amat_hooks.engine import AdversarialEngine

        self._adapter_asked = True
        self.find_model()
        with self.running_model():
            self.adapter = self.pm.hook.amat_adapter(batch=data, host=self)
        if self.adapter is None:
            if self.policy.name != "none":
                raise RunnerError(unknown_structure("no adapter answered amat_adapter for it"))
            self.hooks.remove()  # --adv none: nothing to observe
        else:
            try:
                x = self.adapter.inputs(data)
                self.input_shape = [int(v) for v in x.shape[1:]]
            except AdapterError as e:
                if self.policy.name != "none":
                    raise RunnerError(unknown_structure(f"{self.adapter.describe()}: {e}")) from None
            self._resolve_protocol()
            self.engine = AdversarialEngine(self.policy, self.adapter, host=self, pm=self.pm)
            self.recording_losses = True
            self.amat_log(f"adapter: {self.adapter.describe()}")
            if hasattr(self.policy, "calibrate_hint"):
                self.policy.calibrate_hint = self.adapter.calibrate_hint
            if self.policy.name != "none":
                self.amat_log(f"forward: {_BATCH_TEXT[self.batch_mode]}")
        if self.resumed_from is not None:
            self._check_resumed_weights()

    def _resolve_protocol(self) -> None:
        """The settings for the adapter's kind of trainer (the protocol's column), its input
        range where the protocol clamps noise to it, the authors' xi preset; the policy is
        rebuilt with them and a resumed state applied again."""
        cfg = self.config.resolved(self.adapter.protocol_kind)
        if cfg.mode == "sat" and cfg.sat_loss == "noisy":
            raise RunnerError("--adv-sat-loss noisy (the authors' nnU-Net SAT) is not available under amat run: the "
                              "script trains on the clean and the noisy rows it is handed; drop the flag")
        if cfg.clamp == "input" and cfg.bounds is None and self.adapter.input_bounds is not None:
            cfg.bounds = tuple(self.adapter.input_bounds)
        cfg = cfg.with_xi_preset()
        self.adapter.configure(cfg)
        if cfg != self.config:
            self.config = cfg
            self.policy = cfg.build_policy(calibrate_hint=self.adapter.calibrate_hint, log=self.amat_log)
            if self._resume_state is not None:
                try:
                    self.policy.load_state_dict(self._resume_state, force=self._resume_force)
                except ValueError as e:
                    raise RunnerError(f"--adv-resume: {e}") from None
            self.amat_log(f"settings ({cfg.protocol} protocol, {cfg.kind} trainer): {cfg.to_json()}")

    def match_forward(self, x: Any) -> PendingBatch | None:
        """The handed batch a training forward of the model receives (first unmatched of
        the same shape), or None."""
        if not isinstance(x, Tensor) or x.dim() == 0:
            return None
        for p in self.pending:
            if not p.forwarded and tuple(x.shape) == p.shape:
                p.forwarded = True
                return p
        return None

    def flush(self, final: bool = True) -> None:
        """The margin test of every batch whose forward ran (``final``: of every pending
        batch; those the model never received cost one extra forward)."""
        if not self._confirmed and self.adapter is not None and (
                final or any(p.forwarded for p in self.pending)):
            self._confirm()  # the script has run its loss on the first batch by now
        if not self.pending:
            return
        keep = []
        for p in self.pending:
            if p.noisy_out is None and not final:
                keep.append(p)
                continue
            if not p.forwarded:
                self.warn("the model was not called with the rows the runner handed to the script (the "
                          "script changes their shape before its forward, or calls the model another way), so "
                          "the runner could not run the clean and the noisy rows as separate forward passes; "
                          "they ran as the script ran them"
                          + ("; AMAT's margin test costs one extra forward per batch"
                             if self.policy.name == "amat" else ""), key="unmatched")
            self._observe(p)
        self.pending = keep

    def _confirm(self) -> None:
        self._confirmed = True
        self.recording_losses = False
        try:
            self.adapter.check_first_step(self)  # logs what it corrects, or refuses the run
        except AdapterError as e:
            raise RunnerError(str(e)) from None
        xi_file = getattr(self.options, "adv_xi_file", None)
        if xi_file and self.policy.name == "amat":
            from amat_hooks.state import XiFileError, read_xi_file

            kind = self.adapter.protocol_kind
            try:
                xf = read_xi_file(xi_file)
                if kind in ("landmark", "yolov5"):  # the amat run adapters that have a calibrate task
                    xf.check_task(kind, fix=f"write one with `amat calibrate {kind}`")
                elif xf.task is not None:
                    raise XiFileError(f"{xi_file} holds xi of a {xf.task} model, but this script's batches go "
                                      f"through the {self.adapter.name} adapter, which has no calibrate task; pass "
                                      f"the thresholds with --adv-xi")
                xf.check_identity(self.adapter.identity())
            except XiFileError as e:
                raise RunnerError(f"--adv-xi-file: {e}") from None
        self.loss_calls.clear()
        if self.policy.name == "none":
            self.hooks.remove()

    def _observe(self, p: PendingBatch) -> None:
        """Algorithm 1 lines 9-12 for one batch, with the terms of the script's forward."""
        from amat_hooks.attacks import preserved_state

        if self.policy.name != "amat":
            return  # STD/SAT keep no per-sample state
        pert = p.perturbation
        with torch.no_grad(), self.running_model():
            noisy = clean = None
            if p.noisy_out is not None:
                noisy = self.adapter.output_terms(p.data, p.noisy_out)
                if noisy is not None:
                    clean = self.adapter.output_terms(p.data, p.clean_out)
            if noisy is None:  # no output seen, or an adapter without terms of an output
                with preserved_state(self.model):
                    noisy = pert.bound_loss.terms(pert.x_adv)
                    if pert.clean_terms is None and self.policy.needs_clean_terms:
                        clean = pert.bound_loss.terms(pert.x)
            self.engine.observe(pert, noisy, clean)

    def before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Global optimizer step pre-hook: refuse a step that followed no attacked batch;
        run the margin test of the batches trained in this step (before the update)."""
        try:
            self._before_step()
        except RunnerError as e:
            self.refused = str(e)
            raise

    def _before_step(self) -> None:
        if self._since_step == 0:
            if self.total.batches == 0:
                why = ("no batch came from a torch.utils.data.DataLoader in training mode; the runner "
                       "patches DataLoader to add the noisy samples, so this script cannot be patched "
                       "(build the training batches with a DataLoader, or use the AdversarialLoop API)")
            else:
                why = ("optimizer.step() ran twice without a new training batch from a DataLoader; "
                       "batches built outside a DataLoader cannot be patched")
            if self.find_model() is None:
                why = ("no model found: no torch.optim optimizer was created with the model's parameters "
                       "before the first training batch")
            raise RunnerError(f"cannot patch this script: {why}. Refusing to train without "
                              f"{self.config.label}.")
        self.flush(final=True)
        self._since_step = 0
        self.total.steps += 1
        self.this_epoch.steps += 1

    def pass_complete(self) -> None:
        """A loader yielded its last training batch of a pass: the epoch closes before the next
        training batch or at the script's end (its step and checkpoint come first)."""
        self._pass_done = True

    def end_of_pass(self) -> None:
        """A training pass over a DataLoader ended: one epoch."""
        self._pass_done = False
        self.flush(final=True)
        if self.engine is not None:
            self.engine.epoch_end(self.epoch)  # margin sync across ranks + amat_epoch_end (history)
        else:
            self.pm.hook.amat_epoch_end(epoch=self.epoch, summary=self.policy.summary(), host=self)
        self.amat_log(f"epoch {self.epoch}: {self.describe(self.this_epoch)}")
        self.epoch += 1
        self.this_epoch = _Counts()
        if self.checkpoint_dir is not None:
            self.write_state(self.checkpoint_dir / STATE_NAME)

    def describe(self, counts: _Counts | None = None) -> str:
        """One line: mode, batches, rows fed, mean noise, margin summary and xi (``counts``:
        one epoch's; default: this run's totals)."""
        c = counts or self.total
        pol = self.policy
        parts = [f"{self.config.label}", f"batches {c.batches}", f"rows fed {c.rows}"]
        if c.noise_rows:
            parts.append(f"mean noise L2 {c.noise_sum / c.noise_rows:.4g}")
        if pol.name == "amat":
            parts.append(pol.describe())
        elif getattr(pol, "nan_samples", 0):
            parts.append(f"NaN samples {pol.nan_samples}")
        return ", ".join(parts)

_BATCH_TEXT = {"split": "clean and noisy rows as two forward passes (BatchNorm sees each separately; "
                        "--adv-batch joint: one pass of 2B rows)",
               "joint": "clean and noisy rows as one forward pass of 2B rows (--adv-batch joint: BatchNorm "
                        "statistics over both)"}


def _emit(text: str, stream: Any) -> None:
    """Print a line; through ``tqdm.write`` while a tqdm bar is active (the line then
    appears above the bar instead of inside it)."""
    tq = sys.modules.get("tqdm")
    bar = getattr(tq, "tqdm", None) if tq is not None else None
    if bar is not None and len(getattr(bar, "_instances", ()) or ()) > 0:
        bar.write(text, file=stream)
        stream.flush()
    else:
        print(text, file=stream, flush=True)
