"""Keep Ultralytics off the network: fonts, AMP check, telemetry.

Ultralytics downloads ``Arial.ttf``/``Arial.Unicode.ttf`` for plot labels (``check_font``
asks the URL even with ``YOLO_OFFLINE=1``) and ``yolo26n.pt`` for its AMP self-check on
GPUs. We pre-provide the fonts from matplotlib's bundled DejaVu Sans (same glyph
coverage for Latin labels, no download) and skip the AMP self-check when its weights are
not on disk, exactly as Ultralytics does when a download fails (AMP stays on).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from amat_hooks.offline import apply_offline_env

#: Font names Ultralytics asks ``check_font`` for.
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def matplotlib_font() -> Path:
    """DejaVu Sans as shipped inside matplotlib (always present with matplotlib)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's DejaVuSans.ttf is missing at {path}; reinstall matplotlib")
    return path


def provide_fonts(config_dir: Path | None = None) -> list[Path]:
    """Copy DejaVu Sans into Ultralytics' config dir under the names it looks for, so
    ``check_font`` finds them locally and never downloads. Returns the files created."""
    if config_dir is None:
        apply_offline_env()
        from ultralytics.utils import USER_CONFIG_DIR as config_dir
    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    created = []
    src = None
    for name in FONT_NAMES:
        dst = config_dir / name
        if not dst.exists():
            src = src or matplotlib_font()
            # unique temp name + rename: DDP ranks / parallel runs may do this at the same time
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=config_dir)
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            created.append(dst)
    return created


def prepare_offline() -> None:
    """Offline switches + local fonts; call before Ultralytics builds a dataset or plots."""
    apply_offline_env()
    provide_fonts()


@contextlib.contextmanager
def offline_amp_check() -> Iterator[None]:
    """Inside the block, Ultralytics' trainer uses an AMP check that never downloads."""
    import ultralytics.engine.trainer as trainer_mod

    original = trainer_mod.check_amp

    def check_amp(model):  # same contract as ultralytics.utils.checks.check_amp
        import torch
        from ultralytics.utils import LOGGER, WEIGHTS_DIR

        device = next(model.parameters()).device
        if device.type in {"cpu", "mps"} or (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
            return original(model)
        if device.type == "cuda" and torch.cuda.is_available():
            LOGGER.warning("AMP: self-check skipped (offline; yolo26n.pt not on disk, amat-hooks never downloads). "
                           "Keeping amp=True as Ultralytics does offline; pass amp=False if losses turn NaN.")
        return True

    trainer_mod.check_amp = check_amp
    try:
        yield
    finally:
        trainer_mod.check_amp = original
