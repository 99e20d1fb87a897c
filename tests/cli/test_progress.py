"""Progress of the long commands, TTY-aware: a tqdm bar on a terminal, whole lines (never a
carriage return) into a pipe or file; ``amat grid`` says which Delta starts and finishes and
prints the running training's epoch lines from its log."""
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap

import pytest
import torch

from amat_hooks.cli.grid import EPOCH_LINE, follow_log
from amat_hooks.evaluation.progress import live_display, progress

# A third-party task whose "training" prints epoch lines (with tqdm-style \r redraws between
# them) into its log, slowly enough that the grid follows it while it runs.
PROGRESS_TASK = '''
import sys
from pathlib import Path

import torch
from torch import nn

from amat_hooks import CalibrationSet, Task, TrainRun, hookimpl
from amat_hooks.evaluation.segmentation import SegmentationEvalTask


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    return x, (x[:, 0] > 0).long()


def terms(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none").flatten(1).mean(1)


def load(path):
    net = nn.Conv2d(1, 2, 1)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net


TRAIN = """
import sys, time, torch
from torch import nn
for epoch in range(1, 4):
    for i in range(1, 5):
        sys.stdout.write(f"\\\\r  {i}/4 batches"); sys.stdout.flush()
    sys.stdout.write(f"\\\\n[amat] epoch {epoch}: margins mean {epoch * DELTA:g}\\\\n"); sys.stdout.flush()
    time.sleep(0.4)
torch.manual_seed(int(DELTA * 10)); torch.save(nn.Conv2d(1, 2, 1).state_dict(), OUT)
"""


class ProgressToyTask(Task):
    name = "ptoy"
    help = "a toy task whose training prints epoch lines"
    default_levels = "0.5,1"

    def add_arguments(self, p, command):
        p.add_argument("--n", type=int, default=8)
        if command == "calibrate":
            p.add_argument("--checkpoint", required=True)

    def eval_task(self, name, spec, args):
        x, y = data(args.n, 1)
        return SegmentationEvalTask(load(spec), x, y, terms, batch_size=2)

    def calibration_set(self, args, log=print):
        x, y = data(args.n, 0)
        return CalibrationSet(task=SegmentationEvalTask(load(args.checkpoint), x, y, terms, batch_size=2),
                              identity={"n": args.n})

    def train_run(self, delta, folder, args):
        out = folder / "model.pt"
        code = TRAIN.replace("DELTA", repr(delta)).replace("OUT", repr(str(out)))
        return TrainRun(cmd=[sys.executable, "-c", code], artefact=lambda: out if out.is_file() else None)


@hookimpl
def amat_tasks():
    return [ProgressToyTask()]
'''


@pytest.fixture(scope="module")
def progress_task(pip_install):
    return pip_install("amat-progress-toy", {"amat_progress_toy.py": PROGRESS_TASK, "pyproject.toml": textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "amat-progress-toy"
        version = "0.0.1"
        [project.entry-points.amat_hooks]
        ptoy = "amat_progress_toy"
        [tool.setuptools]
        py-modules = ["amat_progress_toy"]
        """)})


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "std.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), path)
    return path


def _cli(*args):
    return [sys.executable, "-m", "amat_hooks.cli", *map(str, args)]


def _piped(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "TERM"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _on_terminal(args, cwd, timeout=300) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; everything it wrote, and its exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a new pty is 0 x 0
    p = subprocess.Popen(args, cwd=cwd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                         env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            p.kill()
            raise TimeoutError(f"{args} wrote nothing for {timeout} s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


# -- the display itself ----------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_without_a_terminal_and_a_bar_on_one(monkeypatch, capsys):
    assert list(progress(range(3), total=3, desc="eval X", interval=3600)) == [0, 1, 2]
    err = capsys.readouterr().err
    # first item (an early estimate) and the end; nothing in between with a long interval
    assert err.splitlines() == [err.splitlines()[0], "eval X: 3/3 batches, 0 s"]
    assert err.startswith("eval X: 1/3 batches, 0 s") and "\r" not in err
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.delenv("TERM", raising=False)
    assert live_display() and list(progress(range(3), total=3, desc="eval X")) == [0, 1, 2]
    assert "\r" in term.getvalue() and "3/3" in term.getvalue()  # tqdm's bar
    monkeypatch.setenv("TERM", "dumb")
    assert not live_display()
    monkeypatch.delenv("TERM")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: lines, even on a terminal
    term.seek(0), term.truncate()
    assert not live_display() and list(progress(range(2), total=2, desc="cal")) == [0, 1]
    assert term.getvalue().splitlines()[-1] == "cal: 2/2 batches, 0 s" and "\r" not in term.getvalue()


def test_epoch_lines_of_every_host_are_recognised():
    for line in ("[amat] epoch 3: 412 batches, margins mean 1.5", "AMAT epoch 2: margins n=40 mean=0.5",
                 "2024-05-01 12:00:00.123456: Epoch 7", "Epoch 0 train rows 4 logic loss 0.69"):
        assert EPOCH_LINE.search(line), line
    for line in ("      Epoch    GPU_mem   box_loss", "Epoch time: 5.2 s", "epochs=50", "  2/4 batches"):
        assert not EPOCH_LINE.search(line), line


def test_follow_log_prints_epoch_lines_as_they_come_and_a_heartbeat(tmp_path, capsys):
    log = tmp_path / "train.log"
    code = ("import sys, time\n"
            "print('[amat] epoch 1: first', flush=True)\n"
            "sys.stdout.write('\\r 1/2\\r 2/2'); sys.stdout.flush(); time.sleep(1.2)\n"
            "print('\\n[amat] epoch 2: second', flush=True)\nsys.exit(3)\n")
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)
        assert follow_log(p, log, "Delta=2", poll=0.1, heartbeat=0.5) == 3
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [ln for ln in lines if " | " in ln] == ["Delta=2 | [amat] epoch 1: first", "Delta=2 | [amat] epoch 2: second"]
    still = [i for i, ln in enumerate(lines) if ln.startswith("Delta=2: still training (")]
    assert still and 0 < still[0] < len(lines) - 1  # between the two epochs, while the training slept
    assert "\r" not in out


# -- the commands, piped and on a terminal -----------------------------------------------------
def test_piped_commands_write_lines_and_no_carriage_return(progress_task, model, tmp_path):
    ev = _piped(_cli("eval", "ptoy", "--models", f"STD={model}", "--pgd-steps", "2", "--out", tmp_path / "ev"),
                tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "eval segmentation: 1/4 batches" in ev.stderr and "eval segmentation: 4/4 batches" in ev.stderr
    cal = _piped(_cli("calibrate", "ptoy", "--checkpoint", model, "-o", tmp_path / "xi.json"), tmp_path)
    assert cal.returncode == 0, cal.stderr
    assert "calibrate segmentation: 4/4 batches" in cal.stderr
    grid = _piped(_cli("grid", "ptoy", "--deltas", "0.5,1", "--pgd-steps", "2", "--out", tmp_path / "grid"),
                  tmp_path)
    assert grid.returncode == 0, grid.stderr
    lines = grid.stdout.splitlines()
    for i, d in ((1, "0.5"), (2, "1")):
        where = f"Delta={d} ({i}/2)"
        start = lines.index(f"{where}: training (log {tmp_path / 'grid' / f'delta_{d}' / 'train.log'})")
        trained = next(k for k, ln in enumerate(lines) if ln.startswith(f"{where}: trained in "))
        done = next(k for k, ln in enumerate(lines) if ln.startswith(f"{where}: done, AUC_robust "))
        epochs = [k for k, ln in enumerate(lines) if ln.startswith(f"Delta={d} | [amat] epoch ")]
        assert [lines[k].split(": margins")[0] for k in epochs] == [f"Delta={d} | [amat] epoch {e}" for e in (1, 2, 3)]
        assert start < epochs[0] and epochs[-1] < trained < done  # the epochs while it trains
    assert "batches" not in grid.stdout  # the log's \r redraws are not repeated
    for p in (ev, cal, grid):
        assert "\r" not in p.stdout + p.stderr
    quiet = _piped(_cli("grid", "ptoy", "--deltas", "2", "--pgd-steps", "2", "--out", tmp_path / "grid", "--no-progress"),
                   tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "Delta=2 (1/1): training" in quiet.stdout and "| [amat] epoch" not in quiet.stdout
    assert "eval segmentation" not in quiet.stderr


def test_on_a_terminal_eval_calibrate_and_grid_draw_bars(progress_task, model, tmp_path):
    code, out = _on_terminal(_cli("eval", "ptoy", "--models", f"STD={model}", "--pgd-steps", "2",
                                  "--out", tmp_path / "ev"), tmp_path)
    assert code == 0, out
    assert "\r" in out.replace("\r\n", "\n") and "4/4" in out  # tqdm redraws its line
    code, out = _on_terminal(_cli("calibrate", "ptoy", "--checkpoint", model, "-o", tmp_path / "xi.json"), tmp_path)
    assert code == 0, out
    assert "\r" in out.replace("\r\n", "\n") and "calibrate segmentation" in out
    code, out = _on_terminal(_cli("grid", "ptoy", "--deltas", "0.5", "--pgd-steps", "2", "--out", tmp_path / "g"),
                             tmp_path)
    assert code == 0, out
    text = out.replace("\r\n", "\n")
    assert "Delta=0.5 training" in text and "\r" in text  # the status line of the running training
    assert "Delta=0.5 | [amat] epoch 3: margins mean 1.5\n" in text  # printed above it, whole


def test_eval_runs_named_method_slash_run_make_one_line_with_a_band(progress_task, model, tmp_path):
    """``--models AMAT/seed0=...,AMAT/seed1=...``: both runs in the tables, one AMAT line with its
    mean +- sd band in the figure (evaluation/figures.py)."""
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), other)
    ev = _piped(_cli("eval", "ptoy", "--models", f"AMAT/seed0={model},AMAT/seed1={other},STD={model}",
                     "--pgd-steps", "2", "--out", tmp_path / "ev", "--no-progress"), tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "| AMAT/seed0 |" in ev.stdout and "| AMAT/seed1 |" in ev.stdout
    assert (tmp_path / "ev" / "models" / "AMAT_seed0.json").is_file()
    svg = (tmp_path / "ev" / "robustness.svg").read_text()
    assert svg.count('id="curve-pgd-AMAT"') == 1 and svg.count('id="band-pgd-AMAT"') == 1
    assert 'id="curve-pgd-STD"' in svg and 'id="band-pgd-STD"' not in svg
