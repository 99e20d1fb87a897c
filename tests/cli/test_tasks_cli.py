"""What calibrate/eval/grid share: the xi file schema, the state envelope, the
model-spec and --deltas parsers, the one error path, and a third-party task that reaches
all three commands through an entry point with no change to the core."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from amat_hooks.state import XiFileError, read_xi_file, write_xi_file, xi_record
from amat_hooks.cli import main
from amat_hooks.cli.options import parse_deltas, parse_model_specs
from amat_hooks.config import AdvConfig, AdvConfigError
from amat_hooks.tasks import TaskError


# -- the xi file -------------------------------------------------------------------------------------
def test_xi_record_holds_both_rules_computed_by_hand(tmp_path):
    terms = torch.tensor([[1.0, 10.0], [3.0, 10.0], [float("nan"), 1.0], [2.0, 13.0]])
    rec = xi_record("toy", terms, ["a", "b"], "mean", identity={"dataset": "D"}, source={"model": "m.pt"})
    # finite rows only: a = 1, 3, 2 (mean 2, population std sqrt(2/3)); b = 10, 10, 13 (mean 11, std sqrt(2))
    assert rec["xi"]["mean"] == pytest.approx([2.0, 11.0])
    assert rec["xi"]["mean+2std"] == pytest.approx([2 + 2 * (2 / 3) ** 0.5, 11 + 2 * 2 ** 0.5])
    assert rec["n_samples"] == 4 and rec["n_nonfinite"] == 1 and rec["stats"]["max"] == [3.0, 13.0]
    path = write_xi_file(tmp_path / "xi.json", rec)
    xf = read_xi_file(path)
    assert xf.task == "toy" and xf.term_names == ["a", "b"] and xf.rule == "mean"
    assert xf.thresholds() == pytest.approx([2.0, 11.0])
    assert xf.thresholds("mean+2std", n_terms=2)[1] == pytest.approx(11 + 2 * 2 ** 0.5)
    with pytest.raises(XiFileError, match=r"has 2 thresholds \(a, b\) but the loss has 3 terms; run amat calibrate"):
        xf.thresholds(n_terms=3, fix="run amat calibrate")
    with pytest.raises(XiFileError, match="calibrated for another run \\(dataset 'D' != 'E'\\)"):
        xf.check_identity({"dataset": "E"})
    xf.check_identity({"dataset": "D", "plans": "anything"})  # keys the file does not hold are not checked


def test_xi_files_of_another_task_or_format_are_refused(tmp_path):
    rec = xi_record("landmark", torch.tensor([[1.0, 2.0, 3.0]]), ["heatmap", "offset_x", "offset_y"], "mean")
    xf = read_xi_file(write_xi_file(tmp_path / "xi.json", rec))
    xf.check_task("landmark", ["heatmap", "offset_x", "offset_y"])
    with pytest.raises(XiFileError, match="holds xi of a landmark model \\(heatmap, offset_x, offset_y\\), not of yolo"):
        xf.check_task("yolo", ["box", "cls", "dfl"])
    with pytest.raises(XiFileError, match="has the terms heatmap, offset_x, offset_y, this loss has loss"):
        xf.check_task("landmark", ["loss"])
    old = {"xi": [1.0, 2.0, 3.0], "rule": "mean+2std", "terms": ["box", "cls", "dfl"]}  # the 0.1 YOLO format
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(XiFileError, match="not an xi file written by amat calibrate; rerun it"):
        read_xi_file(tmp_path / "old.json", fix="rerun it")
    with pytest.raises(XiFileError, match="no xi file at"):
        read_xi_file(tmp_path / "missing.json")


def test_adv_xi_file_flag_reads_the_file_and_its_rule(tmp_path):
    import argparse

    rec = xi_record("landmark", torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), ["h", "y", "x"], "mean+2std")
    path = write_xi_file(tmp_path / "xi.json", rec)
    p = argparse.ArgumentParser()
    AdvConfig.add_arguments(p)
    cfg = AdvConfig.from_args(p.parse_args(["--adv", "amat", "--adv-step", "1", "--adv-xi-file", str(path)]))
    assert cfg.xi == pytest.approx(rec["xi"]["mean+2std"]) and cfg.xi_rule == "mean+2std"
    assert cfg.xi_source == f"calibration file {path}"
    cfg = AdvConfig.from_args(p.parse_args(["--adv", "amat", "--adv-step", "1", "--adv-xi-file", str(path),
                                            "--adv-xi-rule", "mean"]))
    assert cfg.xi == pytest.approx([2.0, 2.0, 2.0])
    with pytest.raises(AdvConfigError, match="--adv-xi and --adv-xi-file both given"):
        AdvConfig.from_args(p.parse_args(["--adv", "amat", "--adv-step", "1", "--adv-xi", "1,1,1",
                                          "--adv-xi-file", str(path)]))


# -- parsers ----------------------------------------------------------------------------------------
def test_model_spec_parser():
    named = parse_model_specs("STD=runs/std/m.pth, AMAT=runs/amat/m.pth", lambda s: "x")
    assert named == {"STD": "runs/std/m.pth", "AMAT": "runs/amat/m.pth"}
    assert parse_model_specs("runs/std/m.pth", lambda s: s.split("/")[1]) == {"std": "runs/std/m.pth"}
    assert parse_model_specs("SAT5=nnUNetTrainerSAT@/r/sat5", str) == {"SAT5": "nnUNetTrainerSAT@/r/sat5"}
    with pytest.raises(TaskError, match="given twice"):
        parse_model_specs("A=x,A=y", str)
    with pytest.raises(TaskError, match="is not NAME=SPEC"):
        parse_model_specs("A=", str)
    with pytest.raises(TaskError, match="at least one"):
        parse_model_specs(" , ", str)


def test_deltas_parser():
    assert parse_deltas("1,0.5, 2") == [0.5, 1.0, 2.0]
    for bad, match in (("0,1", "positive"), ("a", "comma-separated"), ("1,1", "twice"), ("", "positive"),
                       ("inf", "positive")):
        with pytest.raises(TaskError, match=match):
            parse_deltas(bad)



def test_state_envelope_round_trip_and_report_line(tmp_path):
    """One envelope for every host: written once, read once (sidecar or checkpoint entry);
    the report header names the model once, the training label only where it differs."""
    from amat_hooks.state import CHECKPOINT_KEY, StateError, read_adversarial_state, read_state, state_envelope, write_state

    sat_cfg = AdvConfig(mode="sat", eps=0.5)
    write_state(tmp_path / "sat.json", state_envelope("runner", sat_cfg, sat_cfg.build_policy()))
    amat_cfg = AdvConfig(mode="amat", delta=1.0, xi=[1.5, 2.0], xi_source="calibration file xi.json")
    pol = amat_cfg.build_policy()
    pol.margins.update(["a", "b", "c"], [False, True, True], [1.0, 1.0, 1.0])  # margins 1, 2, 2
    env = state_envelope("nnunet", amat_cfg, pol, epochs=3, history=[{"epoch": 0, "margin_mean": 5 / 3}])
    assert env["digest"] == pol.margins.digest() and env["epochs"] == 3 and env["xi"] == [1.5, 2.0]
    torch.save({"network_weights": {}, CHECKPOINT_KEY: env}, tmp_path / "ckpt.pth")
    assert read_state(tmp_path / "ckpt.pth")["policy"] == env["policy"]
    assert read_adversarial_state(tmp_path / "sat.json").describe("SAT0.5") == "SAT0.5: no margins"
    assert read_adversarial_state(tmp_path / "ckpt.pth").describe("AMAT") == (
        "AMAT: 3 margins (mean 1.667), xi=[1.5, 2] from calibration file xi.json, boundary=none")
    (tmp_path / "foreign.json").write_text(json.dumps({"engine": {"policy": {}}}))
    with pytest.raises(StateError, match="holds no amat-hooks state"):
        read_state(tmp_path / "foreign.json")
    broken = dict(env, policy=None)
    write_state(tmp_path / "broken.json", broken)
    with pytest.raises(StateError, match="'policy' entry is missing or malformed"):
        read_state(tmp_path / "broken.json")
    assert read_adversarial_state(tmp_path / "foreign.json") is None


# -- a third-party task through an entry point ---------------------------------------------------------
TOY_TASK = '''
"""A third-party task: a 1-pixel 'segmentation' model y = sign(w.x) on generated data."""
import sys
from pathlib import Path

import torch
from torch import nn

from amat_hooks import CalibrationSet, Task, TaskError, TrainRun, hookimpl
from amat_hooks.evaluation.segmentation import SegmentationEvalTask


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    return x, (x[:, 0] > 0).long()


def terms(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none").flatten(1).mean(1)


def load(path):
    net = nn.Conv2d(1, 2, 1)
    state = torch.load(path, weights_only=True)
    net.load_state_dict(state)
    return net


class ToyTask(Task):
    name = "toy"
    help = "a toy 1x1-conv segmenter"
    default_levels = "0.5,1"

    def add_arguments(self, p, command):
        p.add_argument("--n", type=int, default=8)
        if command == "calibrate":
            p.add_argument("--checkpoint", required=True)

    def check_model(self, name, spec, args):
        if not Path(spec).is_file():
            raise TaskError(f"toy model {spec} does not exist")

    def eval_task(self, name, spec, args):
        x, y = data(args.n, 1)
        return SegmentationEvalTask(load(spec), x, y, terms, batch_size=4)

    def calibration_set(self, args, log=print):
        x, y = data(args.n, 0)
        return CalibrationSet(task=SegmentationEvalTask(load(args.checkpoint), x, y, terms), identity={"n": args.n})

    def train_run(self, delta, folder, args):
        out = folder / "model.pt"
        code = ("import torch; from torch import nn; torch.manual_seed(int(%r * 10));"
                "torch.save(nn.Conv2d(1, 2, 1).state_dict(), %r)" % (delta, str(out)))
        return TrainRun(cmd=[sys.executable, "-c", code], artefact=lambda: out if out.is_file() else None)


@hookimpl
def amat_tasks():
    return [ToyTask()]
'''


@pytest.fixture(scope="module")
def toy_task_installed(pip_install):
    return pip_install("amat-toy-task", {"amat_toy_task.py": TOY_TASK, "pyproject.toml": textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "amat-toy-task"
        version = "0.0.1"
        [project.entry-points.amat_hooks]
        toy = "amat_toy_task"
        [tool.setuptools]
        py-modules = ["amat_toy_task"]
        """)})


def _amat(*args, cwd):
    return subprocess.run([sys.executable, "-m", "amat_hooks.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_third_party_task_reaches_eval_calibrate_and_grid(toy_task_installed, tmp_path):
    model = tmp_path / "std" / "model.pt"
    model.parent.mkdir()
    torch.manual_seed(0)
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), model)
    for command in ("eval", "calibrate", "grid"):
        p = _amat(command, "--help", cwd=tmp_path)
        assert "toy" in p.stdout, p.stdout
    cal = _amat("calibrate", "toy", "--checkpoint", model, "-o", tmp_path / "xi.json", cwd=tmp_path)
    assert cal.returncode == 0, cal.stderr
    xf = json.loads((tmp_path / "xi.json").read_text())
    assert xf["kind"] == "amat-hooks xi" and xf["task"] == "toy" and xf["identity"] == {"n": 8}
    assert "xi (mean) over 8 training samples: loss=" in cal.stdout
    ev = _amat("eval", "toy", "--models", f"STD={model}", "--pgd-steps", "2", "--out", tmp_path / "ev",
               "--no-progress", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    report = json.loads((tmp_path / "ev" / "robustness.json").read_text())
    assert report["STD"]["levels"] == [0.5, 1.0] and report["STD"]["samples"] == 8
    grid = _amat("grid", "toy", "--deltas", "0.5,1", "--pgd-steps", "2", "--out", tmp_path / "grid",
                 "--no-progress", cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr
    assert "best Delta =" in grid.stdout and (tmp_path / "grid" / "delta_0.5" / "train.log").is_file()
    state = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert sorted(state) == ["0.5", "1"] and all("result" in v for v in state.values())


def test_one_error_path_for_every_command(toy_task_installed, tmp_path):
    missing = _amat("eval", "toy", "--models", f"X={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"amat eval toy: error: toy model {tmp_path / 'nope.pt'} does not exist"
    bad = _amat("grid", "toy", "--deltas", "0,1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "amat grid toy: error: --deltas must be positive numbers, got '0,1'"
    levels = _amat("eval", "toy", "--models", "x.pt", "--levels", "-1", cwd=tmp_path)
    assert levels.returncode == 2 and "noise levels must be finite and > 0" in levels.stderr
    assert "Traceback" not in missing.stderr + bad.stderr + levels.stderr


def test_error_path_in_process(monkeypatch, capsys):
    import argparse

    def boom(args):
        raise RuntimeError("training for Delta=1 failed (exit 3)")

    monkeypatch.setattr("amat_hooks.cli.build_parser", lambda pm=None: _parser_with(boom))
    assert main(["x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("amat x: error: training for Delta=1 failed (exit 3)") and "AMAT_DEBUG=1" in err

    def bad_input(args):
        raise TaskError("split=test is not in data.yaml")

    monkeypatch.setattr("amat_hooks.cli.build_parser", lambda pm=None: _parser_with(bad_input))
    assert main(["x"]) == 2
    assert capsys.readouterr().err == "amat x: error: split=test is not in data.yaml\n"
    del argparse


def _parser_with(func):
    import argparse

    p = argparse.ArgumentParser(prog="amat")
    sub = p.add_subparsers(dest="amat_command")
    sub.add_parser("x").set_defaults(func=func)
    return p
