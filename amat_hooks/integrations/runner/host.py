"""``amat run``: adversarial training for an unmodified training script.

    amat run --adv amat --adv-step 1 --adv-xi-rule mean+2std -- python train.py --epochs 500

The script runs in this process (``runpy``) after the runner patched, from outside:

* ``DataLoader.__init__``: the dataset is wrapped so every sample carries its dataset
  index, and the collate function strips the indices into a batch-level id list. Works
  with any sampler (``shuffle=True``), ``num_workers`` 0 or more and ``in_order=False``,
  because the index travels with the sample itself.
* ``DataLoader.__iter__``: a batch fetched while the model is in training mode (and grad
  is enabled) is attacked through the core (``AdversarialEngine.perturb``: margins -> PGD
  to the loss boundary -> margin update) and handed to the script as ONE batch of 2B rows,
  clean rows then noisy rows, targets repeated. A script whose loss is a mean over samples
  (or a masked sum over a mask sum) then computes exactly ``(L_clean + L_noisy) / 2``, the
  loss of Algorithm 1, with its own loss code. Batches fetched in eval mode pass through.
* ``nn.Module.__init__`` / ``Optimizer.__init__``: the model is the module that owns the
  optimizer's parameters (the outermost one, e.g. a ``DataParallel`` wrapper).
* a global optimizer step pre-hook refuses a step that followed no attacked batch (the
  script does not use a DataLoader, or the model could not be found): no silent clean run.
* ``torch.save``: next to every checkpoint file the runner writes ``FILE.amat.json``
  (margins, xi, settings) and keeps ``amat_state.json`` (latest) in that folder.

Adapters (pluggy) say how a batch and its per-sample loss terms look: built in are the
Multi-Task U-Net loop (:mod:`.multitask_unet.plugin`) and generic ``(x, y)`` loops
(structure from :mod:`.torch_loop`, loss = the script's own ``torch.nn`` loss module
called with ``reduction='none'``). More come from the ``amat_hooks`` entry-point group.
"""
from __future__ import annotations

import argparse
import copy
import os
import runpy
import sys
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..hookspecs import hookimpl

EXIT_USAGE = 2
EXIT_REFUSED = 3
STATE_NAME = "amat_state.json"
SIDECAR_SUFFIX = ".amat.json"


class RunnerError(RuntimeError):
    """The runner cannot apply adversarial training to this script; says why and what to do."""


# -- sample ids: the index travels with the sample ----------------------------------------------
class _Indexed(tuple):
    """(sample, dataset index) as returned by :class:`IndexedDataset`."""

    __slots__ = ()


class IndexedDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset: ``__getitem__(i)`` -> ``(sample, i)``; everything else
    (``len``, attributes) is forwarded, so the script's code keeps working."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, index: Any) -> _Indexed:
        return _Indexed((self.dataset[index], _plain(index)))

    def __getitems__(self, indices: Sequence[Any]) -> list:
        inner = getattr(self.dataset, "__getitems__", None)
        samples = inner(indices) if callable(inner) else [self.dataset[i] for i in indices]
        return [_Indexed((s, _plain(i))) for s, i in zip(samples, indices)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # during unpickling, before __init__ state exists
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _plain(index: Any) -> Hashable:
    if isinstance(index, Tensor):
        return index.item() if index.numel() == 1 else tuple(index.tolist())
    return index


class IndexedBatch:
    """A collated batch and the dataset indices of its samples (one per row)."""

    __slots__ = ("data", "ids")

    def __init__(self, data: Any, ids: list) -> None:
        self.data = data
        self.ids = ids

    def pin_memory(self) -> "IndexedBatch":
        from torch.utils.data._utils.pin_memory import pin_memory

        return IndexedBatch(pin_memory(self.data), self.ids)


class IndexCollate:
    """Wraps the loader's collate function: strips the indices into ``IndexedBatch.ids``."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, data: Any) -> Any:
        if isinstance(data, _Indexed):  # no auto-batching: one sample per "batch"
            return IndexedBatch(self.collate_fn(data[0]), [data[1]])
        if isinstance(data, list) and data and all(isinstance(d, _Indexed) for d in data):
            return IndexedBatch(self.collate_fn([d[0] for d in data]), [d[1] for d in data])
        return self.collate_fn(data)


class RunnerBatch:
    """What the runner hands the engine: the script's batch plus its sample ids."""

    __slots__ = ("data", "ids")

    def __init__(self, data: Any, ids: list) -> None:
        self.data = data
        self.ids = ids


# -- the host ----------------------------------------------------------------------------------------
class Runner:
    """Host object for adapters during ``amat run`` (adapters recognise it by type).

    ``landmark_heatmap_loss`` / ``landmark_bce`` tell the Multi-Task U-Net adapter which
    heatmap term the script trains with and its own ``nn.BCELoss``; ``criterion`` is the
    script's ``torch.nn`` loss module for generic ``(x, y)`` loops.
    """

    def __init__(self, config: Any, pm: Any = None, heatmap_loss: str = "dice",
                 out_dir: str | Path | None = None, verbose: bool = True) -> None:
        from ..engine import AdversarialEngine
        from ..plugins import get_plugin_manager

        self.config = config.validate()
        self.pm = pm or get_plugin_manager()
        self.engine = AdversarialEngine(
            self.config.build_policy(calibrate_hint="amat calibrate landmark (landmark scripts) or --adv-xi",
                                     log=self._say), host=self, pm=self.pm)
        self.landmark_heatmap_loss = heatmap_loss
        self.landmark_bce: nn.Module | None = None
        self.criterion: nn.Module | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.verbose = verbose
        self.model: nn.Module | None = None
        self._modules: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
        self._optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self.epoch = 0
        self.batches_seen = 0           # training-mode batches from patched loaders
        self.batches_perturbed = 0
        self.rows_fed = 0
        self.steps = 0
        self._since_step = 0            # attacked batches since the last optimizer step
        self._landmark: bool | None = None
        self._bce_calls = 0
        self._checked_heatmap = False
        self.checkpoint_dir: Path | None = None
        self.last_checkpoint: str | None = None
        self.script: str | None = None
        self.noise_norm_sum = 0.0
        self.noise_rows = 0
        self.resumed_from: str | None = None

    # -- model / loss discovery ---------------------------------------------------------------
    def find_model(self) -> nn.Module | None:
        """The outermost module owning the most parameters given to an optimizer."""
        if self.model is not None:
            return self.model
        params = {id(p) for opt in list(self._optimizers) for g in opt.param_groups for p in g["params"]}
        if not params:
            return None
        best, best_key = None, None
        for m in list(self._modules):
            if isinstance(m, nn.modules.loss._Loss):
                continue
            n = sum(1 for p in m.parameters() if id(p) in params)
            if n == 0:
                continue
            key = (n, sum(1 for _ in m.modules()))
            if best_key is None or key > best_key:
                best, best_key = m, key
        self.model = best
        if best is not None:
            self._find_losses()
            self._say(f"model: {type(best).__name__} ({sum(p.numel() for p in best.parameters()):,} parameters)")
        return best

    def _find_losses(self) -> None:
        losses = [m for m in list(self._modules) if isinstance(m, nn.modules.loss._Loss)]
        bces = [m for m in losses if isinstance(m, nn.BCELoss)]
        if bces:
            self.landmark_bce = bces[0]
            for b in bces:
                b.register_forward_hook(self._count_bce)
        if losses:
            self.criterion = losses[0]

    def _count_bce(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.model is not None and self.model.training:
            self._bce_calls += 1

    # -- the batch path -------------------------------------------------------------------------
    def training_batch(self) -> bool:
        model = self.find_model()
        return model is not None and model.training and torch.is_grad_enabled()

    def process(self, data: Any, ids: list | None) -> Any:
        """Clean batch of B rows -> the batch the script sees (2B rows for SAT/AMAT)."""
        from ..engine import AdapterError

        self.batches_seen += 1
        if self.engine.policy.name == "none":
            self._since_step += 1
            return data
        if ids is None and self.engine.policy.name == "amat":
            raise RunnerError("AMAT keeps one margin per sample, but the training DataLoader reads an "
                              "IterableDataset, which has no sample indices; use a map-style Dataset "
                              "(__getitem__/__len__) or train with --adv sat")
        if self._landmark is None:
            from .multitask_unet.plugin import is_landmark_batch

            self._landmark = is_landmark_batch(data)
            self._say("adapter: " + ("Multi-Task U-Net (heatmap term: "
                                     f"{self.landmark_heatmap_loss})" if self._landmark else
                                     f"generic (x, y) with the script's loss "
                                     f"{type(self.criterion).__name__ if self.criterion else '(none found)'}"))
        batch = RunnerBatch(data, None if ids is None else list(ids))
        try:
            with torch.enable_grad():
                x = self.engine.inputs(batch)
                src, dev = x.device, _model_device(self.model)
                if dev is not None and dev != src:  # the script moves batches later (img.cuda())
                    batch = RunnerBatch(_move(data, dev), batch.ids)
                    x = self.engine.inputs(batch)
                x_adv, attack = self.engine.perturb(self.model, batch)
                both = torch.cat([x, x_adv.to(dtype=x.dtype, device=x.device)], dim=0)
                out = self.engine.with_inputs(batch, both)
                if dev is not None and dev != src:  # hand the script its batch where it was
                    out = RunnerBatch(_move(out.data if isinstance(out, RunnerBatch) else out, src), None)
        except AdapterError as e:
            raise RunnerError(
                f"cannot patch this script: the training batch has a structure no adapter knows "
                f"({e}). Built-in adapters: Multi-Task U-Net tuples (image, mask, heatmap, offset_y, "
                f"offset_x, ...) and generic (x, y) / dict batches with a torch.nn loss module; add one "
                f"through the 'amat_hooks' entry-point group (see docs/runner.md)") from None
        if attack is not None:
            self.noise_norm_sum += float(attack.noise_norm.sum())
            self.noise_rows += int(attack.noise_norm.numel())
        self.batches_perturbed += 1
        self._since_step += 1
        self._bce_calls = 0
        self.rows_fed += int(both.shape[0])
        return out.data if isinstance(out, RunnerBatch) else out

    def before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Global optimizer step pre-hook: refuse a step that followed no attacked batch."""
        if self._since_step == 0:
            if self.batches_seen == 0:
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
        if (self._landmark and not self._checked_heatmap and self.landmark_bce is not None):
            self._checked_heatmap = True
            used_bce = self._bce_calls > 0
            if used_bce != (self.landmark_heatmap_loss == "bce"):
                want = "bce" if used_bce else "dice"
                raise RunnerError(
                    f"the script {'trains' if used_bce else 'does not train'} with its nn.BCELoss but the "
                    f"runner attacks the '{self.landmark_heatmap_loss}' heatmap term; pass "
                    f"--heatmap-loss {want} so the attack and xi use the loss the script trains with")
        self._since_step = 0
        self.steps += 1

    def end_of_pass(self) -> None:
        """A training pass over a DataLoader ended: one epoch."""
        self.engine.epoch_end(self.epoch)  # margin sync across ranks + amat_epoch_end observers
        self._say(f"epoch {self.epoch}: {self.describe()}")
        self.epoch += 1
        if self.checkpoint_dir is not None:
            self.write_state(self.checkpoint_dir / STATE_NAME)

    def describe(self) -> str:
        """One line: mode, batches, rows fed, mean noise, margin summary and xi."""
        pol = self.engine.policy
        parts = [f"{self.config.label}", f"batches {self.batches_perturbed}", f"rows fed {self.rows_fed}"]
        if self.noise_rows:
            parts.append(f"mean noise L2 {self.noise_norm_sum / self.noise_rows:.4g}")
        if pol.name == "amat":
            parts.append(pol.describe())
        elif getattr(pol, "nan_samples", 0):
            parts.append(f"NaN samples {pol.nan_samples}")
        return ", ".join(parts)

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        pol = self.engine.policy
        xi = pol.xi() if pol.name == "amat" else None
        term_names = None
        if self._landmark:
            from .multitask_unet.losses import TERM_NAMES

            term_names = list(TERM_NAMES)
        return {
            "format": "amat-hooks runner state", "version": 1, "script": self.script,
            "resumed_from": self.resumed_from,
            "config": self.config.to_dict(), "label": self.config.label, "epochs": self.epoch,
            "checkpoint": self.last_checkpoint, "term_names": term_names,
            "heatmap_loss": self.landmark_heatmap_loss if self._landmark else None,
            "xi": None if xi is None else xi.tolist(), "summary": pol.summary(),
            "stats": {"steps": self.steps, "batches": self.batches_perturbed, "rows_fed": self.rows_fed,
                      "mean_noise_norm": self.noise_norm_sum / self.noise_rows if self.noise_rows else None},
            "engine": self.engine.state_dict(),
        }

    def write_state(self, path: Path) -> Path:
        from ..atomic_files import atomic_write_json

        return atomic_write_json(path, self.state())

    def load_state(self, path: str | Path, force: bool = False) -> None:
        from ..atomic_files import read_json

        path = Path(path)
        if not path.is_file():
            raise RunnerError(f"--adv-resume: {path} does not exist; point it at a {STATE_NAME} or "
                              f"*{SIDECAR_SUFFIX} written by amat run")
        state = read_json(path)
        if state.get("format") != "amat-hooks runner state":
            raise RunnerError(f"--adv-resume: {path} is not an amat run state file")
        try:
            self.engine.load_state_dict(state["engine"], force=force)
        except ValueError as e:
            raise RunnerError(f"--adv-resume: {e}") from None
        self.epoch = int(state.get("epochs", 0))
        self.resumed_from = str(path)
        pol = self.engine.policy
        n = len(pol.margins) if pol.name == "amat" else 0
        self._say(f"resumed from {path}: epoch {self.epoch}, {n} margins")

    def after_save(self, f: Any) -> None:
        """Called after the script's torch.save: write the sidecar next to the checkpoint."""
        if not isinstance(f, (str, os.PathLike)):
            return
        p = Path(f)
        if p.name.endswith(SIDECAR_SUFFIX) or p.name == STATE_NAME:
            return
        self.checkpoint_dir = p.parent
        self.last_checkpoint = str(p)
        self.write_state(p.with_name(p.name + SIDECAR_SUFFIX))
        self.write_state(p.parent / STATE_NAME)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[amat] {text}", flush=True)


def _model_device(model: nn.Module | None) -> torch.device | None:
    p = next(model.parameters(), None) if model is not None else None
    return None if p is None else p.device


def _move(v: Any, device: torch.device) -> Any:
    """Tensors (also nested in tuples/lists/dicts) to ``device``."""
    if isinstance(v, Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return {k: _move(x, device) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # namedtuple
        return type(v)(*(_move(x, device) for x in v))
    if isinstance(v, (list, tuple)):
        return type(v)(_move(x, device) for x in v)
    return v


# -- patching -------------------------------------------------------------------------------------------
class Patches:
    """Installs the runner's patches; ``remove()`` puts everything back."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._undo: list[Callable[[], None]] = []

    def install(self) -> "Patches":
        from torch.utils.data import DataLoader, IterableDataset

        runner = self.runner
        orig_init, orig_iter = DataLoader.__init__, DataLoader.__iter__

        def dl_init(loader, *args, **kwargs):
            if args:
                dataset, args = args[0], args[1:]
            else:
                dataset = kwargs.pop("dataset")
            indexed = not isinstance(dataset, IterableDataset)
            orig_init(loader, IndexedDataset(dataset) if indexed else dataset, *args, **kwargs)
            if indexed:
                loader.collate_fn = IndexCollate(loader.collate_fn)

        def dl_iter(loader):
            return _iterate(runner, orig_iter(loader), isinstance(loader.dataset, IterableDataset))

        DataLoader.__init__, DataLoader.__iter__ = dl_init, dl_iter
        self._undo.append(lambda: (setattr(DataLoader, "__init__", orig_init),
                                   setattr(DataLoader, "__iter__", orig_iter)))

        mod_init = nn.Module.__init__

        def module_init(module, *args, **kwargs):
            mod_init(module, *args, **kwargs)
            runner._modules.add(module)

        nn.Module.__init__ = module_init
        self._undo.append(lambda: setattr(nn.Module, "__init__", mod_init))

        opt_init = torch.optim.Optimizer.__init__

        def optimizer_init(opt, *args, **kwargs):
            opt_init(opt, *args, **kwargs)
            runner._optimizers.add(opt)

        torch.optim.Optimizer.__init__ = optimizer_init
        self._undo.append(lambda: setattr(torch.optim.Optimizer, "__init__", opt_init))

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        handle = register_optimizer_step_pre_hook(runner.before_step)
        self._undo.append(handle.remove)

        orig_save = torch.save

        def save(obj, f, *args, **kwargs):
            out = orig_save(obj, f, *args, **kwargs)
            runner.after_save(f)
            return out

        torch.save = save
        self._undo.append(lambda: setattr(torch, "save", orig_save))
        return self

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "Patches":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _iterate(runner: Runner, it: Iterator, iterable: bool = False) -> Iterator:
    """The patched DataLoader iteration: ids stripped, training batches attacked.
    Batches of an IterableDataset carry no ids (``None``): SAT works, AMAT refuses."""
    attacked = 0
    try:
        for item in it:
            if isinstance(item, IndexedBatch):
                data, ids = item.data, item.ids
            elif iterable:
                data, ids = item, None
            else:  # a loader built before the runner patched DataLoader
                yield item
                continue
            if runner.training_batch():
                data = runner.process(data, ids)
                attacked += 1
            yield data
    finally:
        if attacked:
            runner.end_of_pass()


# -- running a script ---------------------------------------------------------------------------------
def parse_command(command: Sequence[str]) -> tuple[str, str, list[str]]:
    """``python SCRIPT.py args`` / ``python -m module args`` / ``SCRIPT.py args`` ->
    (kind "path"|"module", target, args)."""
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RunnerError("no script given; usage: amat run [--adv ...] -- python SCRIPT.py [script args]")
    if Path(cmd[0]).name.startswith("python") and not cmd[0].endswith(".py"):
        cmd = cmd[1:]
        if not cmd:
            raise RunnerError("no script after 'python'; usage: amat run -- python SCRIPT.py [args]")
        if cmd[0] == "-m":
            if len(cmd) < 2:
                raise RunnerError("'python -m' needs a module name")
            return "module", cmd[1], cmd[2:]
        if cmd[0].startswith("-"):
            raise RunnerError(f"interpreter option {cmd[0]!r} is not supported by amat run; "
                              f"use: amat run -- python SCRIPT.py [args]")
    return "path", cmd[0], cmd[1:]


def run_script(runner: Runner, command: Sequence[str]) -> int:
    """Run the script under the patches; returns its exit code (tracebacks printed)."""
    try:
        kind, target, script_args = parse_command(command)
    except RunnerError as e:
        print(f"amat run: {e}", file=sys.stderr)
        return EXIT_USAGE
    if kind == "path" and not Path(target).is_file():
        print(f"amat run: script not found: {target} (working directory {os.getcwd()})", file=sys.stderr)
        return EXIT_USAGE
    runner.script = target
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    before = set(sys.modules)
    code: int = 0
    patches = Patches(runner)
    t0 = time.perf_counter()
    try:
        patches.install()
        if kind == "path":
            sys.argv = [target, *script_args]
            sys.path.insert(0, str(Path(target).resolve().parent))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.argv = [target, *script_args]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = _exit_code(e.code)
    except RunnerError as e:
        print(f"amat run: refused: {e}", file=sys.stderr)
        code = EXIT_REFUSED
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # the script crashed: its traceback, its failure
        traceback.print_exc()
        print(f"amat run: the script {target} failed (exit code 1)", file=sys.stderr)
        code = 1
    finally:
        patches.remove()
        sys.argv, sys.path[:] = saved_argv, saved_path
        script_dir = str(Path(target).resolve().parent) if kind == "path" else None
        for name in set(sys.modules) - before:  # the script's own modules (network, data_loader)
            f = getattr(sys.modules.get(name), "__file__", None) or ""
            if script_dir and f.startswith(script_dir + os.sep):
                del sys.modules[name]
    if code == 0 and runner.engine.policy.name != "none" and runner.batches_perturbed == 0 and runner.steps == 0:
        print("amat run: warning: the script finished without a single training step from a DataLoader; "
              "nothing was trained", file=sys.stderr)
    if runner.batches_seen or runner.steps or runner.resumed_from:
        where = runner.checkpoint_dir or runner.out_dir or Path.cwd()
        path = runner.write_state(Path(where) / STATE_NAME)
        runner._say(f"{runner.describe()}; state written to {path} ({time.perf_counter() - t0:.0f} s)")
    return code


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# -- hook implementations: the runner's batch wrapper, and the generic loss -----------------------------
@hookimpl
def amat_batch_inputs(batch: Any, host: Any) -> Tensor | None:
    if isinstance(batch, RunnerBatch) and isinstance(host, Runner):
        return host.pm.hook.amat_batch_inputs(batch=batch.data, host=host)
    return None


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    if isinstance(batch, RunnerBatch):
        return batch.ids
    return None


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    if not (isinstance(batch, RunnerBatch) and isinstance(host, Runner)):
        return None
    inner = host.pm.hook.amat_batch_with_inputs(batch=batch.data, inputs=inputs, host=host)
    if inner is None:
        return None
    if batch.ids is None:
        return RunnerBatch(inner, None)
    k = max(1, inputs.shape[0] // max(1, len(batch.ids)))
    return RunnerBatch(inner, list(batch.ids) * k)


@hookimpl
def amat_bind_loss(batch: Any, model: nn.Module, host: Any):
    if not (isinstance(batch, RunnerBatch) and isinstance(host, Runner)):
        return None
    bl = host.pm.hook.amat_bind_loss(batch=batch.data, model=model, host=host)
    if bl is not None:
        return bl
    return _generic_bound_loss(batch.data, model, host)


def _generic_bound_loss(data: Any, model: nn.Module, host: Runner):
    """Generic (x, y) loops: the script's own loss module, called with reduction='none'."""
    from ..policies import BoundLoss
    from .torch_loop import _Y_KEYS, _is_tuple_batch, _key

    if _is_tuple_batch(data):
        y = data[1]
    elif isinstance(data, dict) and _key(data, _Y_KEYS) is not None:
        y = data[_key(data, _Y_KEYS)]
    else:
        return None
    if host.criterion is None:
        raise RunnerError("cannot patch this script: no torch.nn loss module (e.g. nn.CrossEntropyLoss()) "
                          "was created, so the per-sample loss for the attack is unknown; create the loss "
                          "as a torch.nn module or add an adapter (amat_bind_loss)")
    crit = copy.copy(host.criterion)
    crit.reduction = "none"

    def terms(x: Tensor) -> Tensor:
        v = crit(model(x), y)
        return v.reshape(v.shape[0], -1).mean(1)

    return BoundLoss(terms=terms, term_names=["loss"])


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from ..config import AdvConfig

    p = subparsers.add_parser(
        "run", help="run an unmodified training script with STD/SAT/AMAT (monkeypatch runner)",
        description="Run an unmodified PyTorch training script with adversarial training added from "
                    "outside: the runner patches DataLoader (sample ids, clean + noisy rows), finds the "
                    "model from the optimizer and lets the adapters describe batch and loss.",
        epilog="example: amat run --adv amat --adv-step 1 --adv-xi-rule mean+2std --heatmap-loss dice "
               "-- python examples/landmark/train.py --data DIR --heatmap-loss dice",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    AdvConfig.add_arguments(p)
    p.add_argument("--heatmap-loss", choices=["dice", "bce"], default="dice",
                   help="Multi-Task U-Net adapter: the heatmap term the script trains with (default dice); "
                        "checked against the script's nn.BCELoss use after the first step")
    p.add_argument("--adv-resume", metavar="STATE", help=f"resume margins/xi from a {STATE_NAME} or "
                                                         f"*{SIDECAR_SUFFIX} of an earlier run")
    p.add_argument("--adv-out", metavar="DIR", help=f"where {STATE_NAME} goes if the script saves no "
                                                    f"checkpoint (default: current directory)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT.py [script arguments]")
    p.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    from ..config import AdvConfig, AdvConfigError

    try:
        cfg = AdvConfig.from_args(args)
        runner = Runner(cfg, heatmap_loss=args.heatmap_loss, out_dir=args.adv_out)
        if args.adv_resume:
            runner.load_state(args.adv_resume, force=args.adv_force_resume)
    except (AdvConfigError, RunnerError) as e:
        print(f"amat run: {e}", file=sys.stderr)
        return EXIT_USAGE
    runner._say(f"mode {cfg.label}: {cfg.to_json()}")
    return run_script(runner, args.command)
