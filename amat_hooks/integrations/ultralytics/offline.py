"""Keep Ultralytics off the network: fonts, AMP check, telemetry.

Ultralytics downloads ``Arial.ttf``/``Arial.Unicode.ttf`` for plot labels (``check_font``
asks the URL even with ``YOLO_OFFLINE=1``) and ``yolo26n.pt`` for its AMP self-check on
GPUs. We pre-provide the fonts from matplotlib's bundled DejaVu Sans (same glyph
coverage for Latin labels, no download) and skip the AMP self-check when its weights are
not on disk, exactly as Ultralytics does when a download fails (AMP stays on).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from amat_hooks.offline import FONT_NAMES, apply_offline_env, matplotlib_font, provide_fonts  # noqa: F401

def prepare_offline() -> None:
    """Offline switches + local fonts; call before Ultralytics builds a dataset or plots."""
    apply_offline_env()
    from ultralytics.utils import USER_CONFIG_DIR

    provide_fonts(USER_CONFIG_DIR)


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
