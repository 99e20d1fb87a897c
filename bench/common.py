"""Helpers shared by the benchmarks: the machine line, CPU clocks, paired ratios, verdicts.

Every benchmark here compares contenders measured in ONE run, alternating round by round, in
CPU seconds (the machine is shared, so wall time says more about the other jobs than about
the code): ``time.process_time`` in-process, ``resource.getrusage`` for child processes.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
from pathlib import Path
from typing import Sequence


def machine(threads: int | None = None) -> str:
    """Platform, CPU model, cores, Python and torch versions, torch threads."""
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    try:
        import torch

        tv = torch.__version__
        threads = torch.get_num_threads() if threads is None else threads
    except ImportError:  # pragma: no cover
        tv = "not installed"
    return (f"{platform.platform()}, {name}, {os.cpu_count()} cores (shared with other jobs), "
            f"Python {platform.python_version()}, torch {tv}, {threads} torch thread(s)")


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    """CPU seconds (user + system) of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, list[float]]:
    """Median of the per-round ratios a[i] / b[i], and the ratios."""
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(ratios), ratios


def quantile(v: Sequence[float], q: float) -> float:
    s = sorted(v)
    i = q * (len(s) - 1)
    lo = int(i)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (i - lo)


def spread(v: Sequence[float]) -> str:
    """The quartiles of per-round ratios, ``q25-q75``."""
    return f"{quantile(v, 0.25):.3f}-{quantile(v, 0.75):.3f}"


def verdict(ratio: float, target: float) -> str:
    """``met`` or ``NOT met (+x.x % over)``."""
    return "met" if ratio <= target else f"NOT met ({100 * (ratio / target - 1):.2f} % over)"


def order(names: Sequence[str], rnd: int) -> list[str]:
    """The contenders' order in round ``rnd``: reversed every other round."""
    return list(names) if rnd % 2 == 0 else list(names)[::-1]
