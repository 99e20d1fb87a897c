"""Keep every run off the network: no weight, font, telemetry or hub downloads."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

#: Environment switches honoured by the libraries we drive.
OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",            # Ultralytics: no hub/asset checks
    "HF_HUB_OFFLINE": "1",          # timm / huggingface_hub
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",            # matplotlib: headless
    "WANDB_MODE": "disabled",
    "COMET_MODE": "disabled",
    "CLEARML_OFF": "1",
    "DISABLE_TELEMETRY": "1",
    "YOLO_AUTOINSTALL": "false",    # Ultralytics / classic YOLOv5: no pip installs of "missing" requirements
}
#: Font names Ultralytics and classic YOLOv5 ask their ``check_font`` for (else downloaded).
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def apply_offline_env() -> None:
    """Set the offline switches unless the user set them explicitly. Classic YOLOv5 reads its
    font folder ``YOLOV5_CONFIG_DIR`` at import and downloads Arial.ttf when it is empty: it
    gets a folder with local fonts."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if "YOLOV5_CONFIG_DIR" not in os.environ:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amat-hooks" / "fonts"
        try:
            provide_fonts(cache)
            os.environ["YOLOV5_CONFIG_DIR"] = str(cache)
        except OSError:  # a read-only home: YOLOv5 then says itself that it cannot fetch its font
            pass


def matplotlib_font() -> Path:
    """DejaVu Sans as shipped inside matplotlib (always present with matplotlib)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's DejaVuSans.ttf is missing at {path}; reinstall matplotlib")
    return path


def provide_fonts(folder: str | os.PathLike) -> list[Path]:
    """DejaVu Sans (matplotlib's) in ``folder`` under the names the trainers' ``check_font``
    looks for, so they find a font locally and never download one. Returns the files created."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    created = []
    for name in FONT_NAMES:
        dst = folder / name
        if not dst.exists():
            # unique temp name + rename: DDP ranks / parallel runs may do this at the same time
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            shutil.copyfile(matplotlib_font(), tmp)
            os.replace(tmp, dst)
            created.append(dst)
    return created


class NetworkAccessError(RuntimeError):
    """Raised by :func:`no_network` on any attempt to reach a non-local address."""


def _is_local(address) -> bool:
    if isinstance(address, (tuple, list)) and address:
        host = str(address[0])
    else:
        return True  # AF_UNIX paths etc.
    return host in ("localhost", "::1", "") or host.startswith("127.")


def _violation(event: str, args) -> str | None:
    """Describe a non-local network attempt seen by an audit hook, or None."""
    if event in ("socket.connect", "socket.connect_ex", "socket.sendto"):
        addr = args[1] if len(args) > 1 else None
        return None if _is_local(addr) else f"{event} {addr}"
    if event == "socket.getaddrinfo":
        host = args[0]
        if host in (None, "localhost", "::1") or str(host).startswith("127."):
            return None
        return f"DNS lookup of {host}"
    return None


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse any connection or DNS lookup of a non-loopback address inside the block.

    An audit hook sees every socket connect/getaddrinfo made through Python (urllib,
    requests, http.client); yields the list of attempts it blocked.
    """
    blocked: list[str] = []
    active = [True]

    def audit(event: str, args) -> None:
        bad = _violation(event, args) if active[0] else None
        if bad:
            blocked.append(bad)
            raise NetworkAccessError(f"network access attempted: {bad}")

    sys.addaudithook(audit)  # audit hooks cannot be removed: deactivated on exit instead
    try:
        yield blocked
    finally:
        active[0] = False


def install_network_guard(report_path: str | None = None) -> None:
    """Process-wide guard (for subprocess tests): every non-local attempt is appended to
    ``report_path`` and refused."""
    def audit(event: str, args) -> None:
        bad = _violation(event, args)
        if bad:
            if report_path:
                with open(report_path, "a", encoding="utf-8") as f:
                    f.write(bad + "\n")
            raise NetworkAccessError(f"network access attempted: {bad}")

    sys.addaudithook(audit)
