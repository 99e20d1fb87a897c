"""The plugin manager: specs, built-in adapters, third-party adapters from entry points."""
from __future__ import annotations

import importlib
import logging

import pluggy

from amat_hooks import hookspecs

ENTRY_POINT_GROUP = "amat_hooks"

#: Built-in plugin modules, registered in this order (the generic one first, so it is
#: asked last). Integrations whose trainer is not installed are skipped.
BUILTIN_PLUGINS = (
    "amat_hooks.integrations.torch_loop",
    "amat_hooks.progress",
    "amat_hooks.cli.commands",
)
OPTIONAL_PLUGINS = (
    "amat_hooks.integrations.multitask_unet.plugin",
    "amat_hooks.integrations.nnunet.plugin",
    "amat_hooks.integrations.ultralytics.plugin",
    "amat_hooks.run.plugin",
)

log = logging.getLogger(__name__)
_pm: pluggy.PluginManager | None = None


def new_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager (tests use this; applications share :func:`get_plugin_manager`)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
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
