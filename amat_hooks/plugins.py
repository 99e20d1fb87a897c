"""The plugin manager (pluggy's eggsample): add the specs, register the built-ins, load
third-party plugins from the entry-point group ``amat_hooks``. Only this module names
integrations, and only as strings."""
from __future__ import annotations

import importlib
import logging
from typing import Any

import pluggy

from amat_hooks import hookspecs
from amat_hooks.hookspecs import hookimpl

ENTRY_POINT_GROUP = "amat_hooks"

#: Built-in plugin modules: the generic adapters of the two generic hosts, the core commands.
BUILTIN_PLUGINS = ("amat_hooks.loop", "amat_hooks.run.plugin", "amat_hooks.cli.commands")
#: Integrations, skipped when their trainer package is not installed.
OPTIONAL_PLUGINS = (
    "amat_hooks.integrations.multitask_unet.plugin",
    "amat_hooks.integrations.nnunet.plugin",
    "amat_hooks.integrations.ultralytics.plugin",
    "amat_hooks.integrations.yolov5.plugin",
)

log = logging.getLogger(__name__)
_pm: pluggy.PluginManager | None = None


class EpochHistory:
    """Built-in: every host keeps the per-epoch policy summaries (``host.amat_history``), so
    checkpoints and sidecars carry the margins and xi of every epoch and reports can draw
    how the margins grew."""

    @hookimpl
    def amat_epoch_end(self, epoch: int, summary: dict[str, float], host: Any) -> None:
        history = getattr(host, "amat_history", None)
        if isinstance(history, list):
            history.append({"epoch": int(epoch), **{k: float(v) for k, v in summary.items()}})


def new_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager (tests use this; applications share :func:`get_plugin_manager`)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(EpochHistory(), name="amat_hooks.history")
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    for name in OPTIONAL_PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Skip an integration whose trainer package is not installed; a broken
            # import inside our own code is a bug and must surface.
            if e.name and (name == e.name or name.startswith(e.name + ".") or not e.name.startswith("amat_hooks")):
                log.debug("optional plugin %s skipped: %s", name, e)
                continue
            raise
        pm.register(mod, name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager: specs added, built-ins registered, entry points loaded."""
    global _pm
    if _pm is None:
        _pm = new_plugin_manager()
    return _pm
