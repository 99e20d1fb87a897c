"""One progress display for every long command (eval, calibrate, grid). On a terminal: a
tqdm bar on stderr (tqdm comes with both trainers). Into a log file (no TTY): a plain line
every ``interval`` seconds and one at the end, instead of a file full of carriage returns."""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator


def progress(items: Iterable[Any], total: int | None = None, desc: str = "", enabled: bool = True,
             unit: str = "batch", interval: float = 30.0) -> Iterator[Any]:
    """``items`` with a progress display on stderr (none when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            return
    t0 = last = time.perf_counter()
    n = 0
    for item in items:
        yield item
        n += 1
        now = time.perf_counter()
        if now - last >= interval:
            last = now
            _line(desc, n, total, unit, now - t0)
    _line(desc, n, total, unit, time.perf_counter() - t0)


def _line(desc: str, n: int, total: int | None, unit: str, elapsed: float) -> None:
    eta = f", about {elapsed / n * (total - n):.0f} s left" if total and n and n < total else ""
    print(f"{desc}: {n}{f'/{total}' if total else ''} {unit}{'es' if unit.endswith('h') else 's'}, "
          f"{elapsed:.0f} s{eta}", file=sys.stderr, flush=True)
