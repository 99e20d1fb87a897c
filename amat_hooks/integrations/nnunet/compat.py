"""Which nnU-Net v2 the integration works with, checked at first use (no nnU-Net import).

The lower bound is what the integration needs, measured against nnunetv2's releases:
trainer discovery through ``nnUNet_extTrainer`` (``nnunetv2/utilities/find_objects.py``)
exists only from 2.8.0; on 2.5-2.7 ``-tr nnUNetTrainerAMAT`` is "not found" although the
variable is set. (The trainers also use the ``MetaLogger`` of 2.7 and the
``plans["continue_training"]`` hand-over of 2.8.)
"""
from __future__ import annotations

import re
from importlib import metadata

#: The oldest nnunetv2 the trainers work with.
MIN_NNUNET = (2, 8)
MIN_NNUNET_TEXT = ".".join(map(str, MIN_NNUNET))


class NnUNetVersionError(ImportError):
    """nnU-Net v2 is missing or older than :data:`MIN_NNUNET`."""


def installed_nnunet_version() -> str | None:
    """The installed nnunetv2's version string (its distribution metadata), or None."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return None


def nnunet_version_problem(version: str | None) -> str | None:
    """One line saying what is wrong with this nnunetv2 version and the fix, or None if it fits."""
    fix = f"pip install -U 'nnunetv2>={MIN_NNUNET_TEXT}' (or pip install -U 'amat-hooks[nnunet]')"
    if version is None:
        return f"nnU-Net v2 is not installed; {fix}"
    m = re.match(r"^\s*(\d+)\.(\d+)", version)
    if m is None:
        return None  # a version we cannot read (a source checkout): let nnU-Net decide
    if (int(m.group(1)), int(m.group(2))) < MIN_NNUNET:
        return (f"amat-hooks needs nnunetv2 >= {MIN_NNUNET_TEXT} (its trainer discovery through nnUNet_extTrainer "
                f"exists from 2.8.0), found {version}; {fix}")
    return None


def check_nnunet_version() -> None:
    """Raise :class:`NnUNetVersionError` (one line) unless a fitting nnunetv2 is installed."""
    problem = nnunet_version_problem(installed_nnunet_version())
    if problem:
        raise NnUNetVersionError(problem)
