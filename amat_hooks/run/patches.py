"""What ``amat run`` patches in torch while the script runs, and how it puts it back.

* ``DataLoader.__init__``: the dataset is wrapped (:class:`~.ids.IndexedDataset`) and the
  collate function strips the indices into a batch-level id list.
* ``DataLoader.__iter__``: a batch fetched while the model trains (and grad is enabled) goes
  through :meth:`Runner.process` (2B rows for SAT/AMAT); batches fetched in eval mode pass
  through; the end of a training pass is an epoch (:meth:`Runner.end_of_pass`).
* ``nn.Module.__init__`` / ``Optimizer.__init__``: the runner sees every module (the model
  is the one owning the optimizer's parameters) and the script's loss modules.
* a global optimizer step pre-hook (:meth:`Runner.before_step`): refuses a step that
  followed no attacked batch; runs the margin test before the update.
* global module forward hooks (:class:`~.split.ForwardHooks`): the handed 2B rows as two
  forward passes; the loss modules the script calls.
* ``torch.save``: ``FILE.amat.json`` next to every checkpoint, ``amat_state.json`` in its folder.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from torch import nn

from amat_hooks.run.host import Runner
from amat_hooks.run.ids import IndexCollate, IndexedBatch, IndexedDataset


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
            iterable = isinstance(loader.dataset, IterableDataset)
            return iterate(runner, orig_iter(loader), iterable, None if iterable else _batches(loader))

        DataLoader.__init__, DataLoader.__iter__ = dl_init, dl_iter
        self._undo.append(lambda: (setattr(DataLoader, "__init__", orig_init),
                                   setattr(DataLoader, "__iter__", orig_iter)))

        mod_init = nn.Module.__init__

        def module_init(module, *args, **kwargs):
            mod_init(module, *args, **kwargs)
            runner.note_module(module)

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

        runner.hooks.install()
        self._undo.append(runner.hooks.remove)

        orig_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):  # atomic: a kill mid-save leaves the old file, not half a new one
                from amat_hooks.atomic_files import atomic_write_with

                atomic_write_with(f, lambda handle: orig_save(obj, handle, *args, **kwargs))
                out = None
            else:
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


def iterate(runner: Runner, it: Iterator, iterable: bool = False, per_pass: int | None = None) -> Iterator:
    """The patched DataLoader iteration: ids stripped, training batches attacked.
    Batches of an IterableDataset carry no ids (``None``): SAT works, AMAT refuses.

    A pass over the loader is an epoch. It ends when the iterator ends, or, for loaders that
    keep ONE iterator for the whole run (classic YOLOv5's ``InfiniteDataLoader`` yields
    ``len(loader)`` batches per epoch from it), after ``per_pass`` training batches: the
    runner then closes the epoch before the next training batch (or at the script's end)."""
    attacked = 0
    completed = False
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
                if per_pass and attacked % per_pass == 0:
                    runner.pass_complete()
            yield data
        completed = True
    finally:
        if attacked and not runner.refused and not runner.interrupted and runner.this_epoch.batches:
            if completed:
                runner.end_of_pass()
            else:  # the script left the loop early (break, or an exception on its side)
                try:
                    runner.end_of_pass()
                except Exception:  # noqa: BLE001 - never mask the script's own exception
                    pass


def _batches(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
