"""Which Ultralytics this integration runs on, checked at first use without importing it.

The adapter reads ``E2ELoss`` and the dict loss items of the 8.4 criterion, which no 8.3.x
has; an older or missing Ultralytics is one line with the fix instead of an ImportError
deep inside the first training step."""
from __future__ import annotations

import re
from importlib import metadata

from amat_hooks.tasks import TaskError

#: The oldest Ultralytics release the adapter is known to work with (E2ELoss, dict loss items).
MIN_VERSION = (8, 4)
INSTALL_HINT = "pip install 'ultralytics>=8.4' (or pip install 'amat-hooks[yolo]')"


class UltralyticsVersionError(TaskError):
    """Ultralytics is missing or older than :data:`MIN_VERSION` (one line, exit 2 in ``amat``)."""


def parse_version(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"8.4.190"`` -> ``(8, 4, 190)``."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not m:
        raise UltralyticsVersionError(f"cannot read the Ultralytics version {text!r}; {INSTALL_HINT}")
    return tuple(int(p) for p in m.group(1).split("."))


def check_ultralytics(version: str | None = None) -> str:
    """The installed (or given) Ultralytics version, or :class:`UltralyticsVersionError`."""
    if version is None:
        try:
            version = metadata.version("ultralytics")
        except metadata.PackageNotFoundError:
            raise UltralyticsVersionError(f"Ultralytics is not installed; {INSTALL_HINT}") from None
    found = parse_version(version)
    if found[:len(MIN_VERSION)] < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise UltralyticsVersionError(
            f"Ultralytics {version} is installed, amat-hooks needs >= {need} (its detection loss E2ELoss and "
            f"dict loss items); {INSTALL_HINT}")
    return version
