"""One progress display for every long command (eval, calibrate, grid). On a terminal: a
tqdm bar on stderr (tqdm comes with both trainers; imported only here, and only when a bar is
drawn). Into a log file or a pipe (no TTY), or without tqdm: plain lines, one after the first
item (its time gives an estimate early), one every ``interval`` seconds and one at the end;
never a carriage return."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO


def live_display(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) may get a redrawn bar: a terminal (not
    ``TERM=dumb``) and tqdm importable. Everything else gets whole lines."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    if not tty or os.environ.get("TERM") == "dumb":
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def progress(items: Iterable[Any], total: int | None = None, desc: str = "", enabled: bool = True,
             unit: str = "batch", interval: float = 30.0) -> Iterator[Any]:
    """``items`` with a progress display on stderr (none when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    if live_display(sys.stderr):
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        return
    t0 = last = time.perf_counter()
    n = 0
    for item in items:
        yield item
        n += 1
        now = time.perf_counter()
        if n == 1 or now - last >= interval:
            last = now
            if not (n == 1 and total == 1):  # the end line says it
                _line(desc, n, total, unit, now - t0)
    _line(desc, n, total, unit, time.perf_counter() - t0)


def status_bar(desc: str):
    """A tqdm line on a terminal's stderr for work of unknown length (the grid's running
    training: elapsed time and the last line of its log as ``set_postfix_str``), or None
    where :func:`live_display` says no. Close it when done."""
    if not live_display(sys.stderr):
        return None
    from tqdm import tqdm

    return tqdm(total=None, desc=desc, bar_format="{desc} {elapsed} {postfix}", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """A whole line on ``stream`` (default stdout), above any tqdm bar rather than into it."""
    stream = sys.stdout if stream is None else stream
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):
            tqdm.write(text, file=stream)
            stream.flush()
            return
    print(text, file=stream, flush=True)


def _line(desc: str, n: int, total: int | None, unit: str, elapsed: float) -> None:
    eta = f", about {elapsed / n * (total - n):.0f} s left" if total and n and n < total else ""
    print(f"{desc}: {n}{f'/{total}' if total else ''} {unit}{'es' if unit.endswith('h') else 's'}, "
          f"{elapsed:.0f} s{eta}", file=sys.stderr, flush=True)
