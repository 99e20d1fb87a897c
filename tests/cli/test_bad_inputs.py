"""Issue 31: bad input is refused before any work is done. Table-driven across the entry
points: each command must exit with the given code, print exactly one message line (no
traceback) that names the problem, and write nothing (the working folder stays empty); each
API call must raise the given exception type with a message naming the problem. The counts
go into docs/reliability.md."""
from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from support import amat_cmd, run

#: a plain script: CE loss, DataLoader, a checkpoint per epoch (it must never start)
SCRIPT = r'''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
x = torch.randn(8, 4); y = (x[:, 0] > 0).long()
model = nn.Linear(4, 2); crit = nn.CrossEntropyLoss(); opt = torch.optim.SGD(model.parameters(), lr=0.1)
open("STARTED", "w").write("the script ran")
for xb, yb in DataLoader(TensorDataset(x, y), batch_size=4):
    loss = crit(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
torch.save(model.state_dict(), "ckpt.pt")
'''

RUN = ["run"]
AMAT = RUN + ["--adv", "amat", "--adv-step", "1"]


def _files(tmp: Path, write_xi_files: bool = True) -> dict[str, str]:
    """Inputs the table's rows point at (created outside the checked work folder)."""
    inp = tmp / "inputs"
    inp.mkdir()
    (inp / "script.py").write_text(SCRIPT)
    from amat_hooks.state import write_xi_file, xi_record
    from amat_hooks.zoo.isbi_writers import write_generated_isbi

    write_xi_file(inp / "nnunet_xi.json", xi_record("nnunet", torch.tensor([[0.1], [0.3]]), ["loss"], "mean",
                                                    identity={"dataset": "Dataset004_Hippocampus"}))
    write_generated_isbi(inp / "ceph", n=4, height=48, width=36, num_landmarks=3, seed=0)
    (inp / "not_json.json").write_text("{ this is not json")
    (inp / "empty_state.json").write_text("{}")
    (inp / "a_file").write_text("x")
    ro = inp / "readonly"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    ckpt = inp / "model.pth"
    torch.save(MultiTaskUNet(num_landmarks=3).state_dict(), ckpt)
    return {"script": str(inp / "script.py"), "nnunet_xi": str(inp / "nnunet_xi.json"),
            "not_json": str(inp / "not_json.json"), "empty_state": str(inp / "empty_state.json"),
            # root writes into a chmod-read-only folder: /proc takes no new folders from anyone
            "a_file": str(inp / "a_file"), "readonly": "/proc/amat_hooks_readonly" if os.geteuid() == 0 else str(ro),
            "ckpt": str(ckpt), "inputs": str(inp),
            "data": str(inp / "ceph")}


# (id, argv before '--' (None: no script part), extra argv after the script, exit code, words the line must hold)
CLI_CASES = [
    ("unknown mode", RUN + ["--adv", "bogus"], 2, ["bogus", "none, sat, amat"]),
    ("amat without step", RUN + ["--adv", "amat"], 2, ["--adv-step"]),
    ("step 0", RUN + ["--adv", "amat", "--adv-step", "0"], 2, ["--adv-step", "> 0"]),
    ("step negative", RUN + ["--adv", "amat", "--adv-step", "-1"], 2, ["--adv-step"]),
    ("step nan", RUN + ["--adv", "amat", "--adv-step", "nan"], 2, ["--adv-step", "finite"]),
    ("step inf", RUN + ["--adv", "amat", "--adv-step", "inf"], 2, ["--adv-step", "finite"]),
    ("sat without eps", RUN + ["--adv", "sat"], 2, ["--adv-eps"]),
    ("eps 0", RUN + ["--adv", "sat", "--adv-eps", "0"], 2, ["--adv-eps", "> 0"]),
    ("eps inf", RUN + ["--adv", "sat", "--adv-eps", "inf"], 2, ["--adv-eps", "finite"]),
    ("step size inf", AMAT + ["--adv-step-size", "inf"], 2, ["--adv-step-size", "finite"]),
    ("steps 0", AMAT + ["--adv-steps", "0"], 2, ["--adv-steps", ">= 1"]),
    ("steps not int", AMAT + ["--adv-steps", "2.5"], 2, ["--adv-steps", "2.5"]),
    ("alpha negative", AMAT + ["--adv-alpha", "-1"], 2, ["--adv-alpha"]),
    ("xi not numbers", AMAT + ["--adv-xi", "abc"], 2, ["--adv-xi", "abc"]),
    ("xi nan", AMAT + ["--adv-xi", "nan"], 2, ["--adv-xi", "finite"]),
    ("xi unknown preset", AMAT + ["--adv-xi", "authors:yolo8"], 2, ["authors:yolo8", "authors:landmark"]),
    ("xi file missing", AMAT + ["--adv-xi-file", "{inputs}/missing.json"], 2, ["missing.json"]),
    ("xi file not json", AMAT + ["--adv-xi-file", "{not_json}"], 2, ["not_json.json"]),
    ("xi and xi file", AMAT + ["--adv-xi", "1", "--adv-xi-file", "{nnunet_xi}"], 2, ["--adv-xi", "--adv-xi-file"]),
    ("xi rule unknown", AMAT + ["--adv-xi-rule", "median"], 2, ["median", "mean+2std"]),
    ("boundary unknown", AMAT + ["--adv-boundary", "bogus"], 2, ["bogus", "--adv-boundary"]),
    ("protocol unknown", AMAT + ["--adv-protocol", "autors"], 2, ["autors", "paper"]),
    ("refine unknown", AMAT + ["--adv-refine", "quarter"], 2, ["quarter", "half"]),
    ("update unknown", AMAT + ["--adv-update", "batch"], 2, ["batch", "visit"]),
    ("max margin below step", AMAT + ["--adv-max-margin", "0.1"], 2, ["--adv-max-margin", "0.1"]),
    ("max margin deltas negative", AMAT + ["--adv-max-margin-deltas", "-1"], 2, ["--adv-max-margin-deltas"]),
    ("refine steps negative", AMAT + ["--adv-refine-steps", "-1"], 2, ["--adv-refine-steps"]),
    ("xi momentum above 1", AMAT + ["--adv-xi-momentum", "2"], 2, ["--adv-xi-momentum"]),
    ("norm unknown", AMAT + ["--adv-norm", "l3"], 2, ["l3", "--adv-norm"]),
    ("misspelt flag", RUN + ["--adv", "amat", "--adv-stpe", "1"], 2, ["--adv-stpe"]),
    ("resume missing", AMAT + ["--adv-resume", "{inputs}/nothing.json"], 2, ["--adv-resume", "nothing.json"]),
    ("resume not json", AMAT + ["--adv-resume", "{not_json}"], 2, ["--adv-resume", "not_json.json"]),
    ("resume empty state", AMAT + ["--adv-resume", "{empty_state}"], 2, ["--adv-resume", "empty_state.json"]),
    ("resume an xi file", AMAT + ["--adv-resume", "{nnunet_xi}"], 2, ["--adv-resume", "nnunet_xi.json"]),
    ("out read-only", AMAT + ["--adv-out", "{readonly}"], 2, ["--adv-out", "readonly"]),
    ("out is a file", AMAT + ["--adv-out", "{a_file}"], 2, ["--adv-out", "a_file"]),
    ("no command", RUN + ["--adv", "amat", "--adv-step", "1", "--"], 2, ["no script given"]),
    ("script missing", AMAT + ["--", "python", "{inputs}/nope.py"], 2, ["nope.py"]),
    ("batch mode unknown", AMAT + ["--adv-batch", "triple"], 2, ["triple", "--adv-batch"]),
    # refused at the first batch, before the first optimizer step (the runner's exit code 3)
    ("xi of another task", AMAT + ["--adv-xi-file", "{nnunet_xi}"], 3, ["nnunet", "--adv-xi"]),
    ("xi below the CE floor", AMAT + ["--adv-xi", "-1"], 3, ["-1", "at or below 0"]),
    ("xi at the CE floor", AMAT + ["--adv-xi", "0"], 3, ["at or below 0"]),
    ("xi terms for a 1-term loss", AMAT + ["--adv-xi", "0.5,0.1,0.1"], 3, ["3", "1 term"]),
    ("sat noisy loss under amat run", RUN + ["--adv", "sat", "--adv-eps", "1", "--adv-sat-loss", "noisy"], 3,
     ["--adv-sat-loss noisy"]),
    # the task commands
    ("calibrate out is a folder", ["calibrate", "landmark", "--checkpoint", "{ckpt}", "--data", "{data}", "--out",
                                   "{inputs}"], 2, ["--out", "folder"]),
    ("calibrate out read-only", ["calibrate", "landmark", "--checkpoint", "{ckpt}", "--data", "{data}", "--out",
                                 "{readonly}/xi.json"], 2, ["xi.json", "writable"]),
    ("calibrate rule unknown", ["calibrate", "landmark", "--checkpoint", "{ckpt}", "--data", "{data}", "--rule",
                                "median"], 2, ["median"]),
    ("calibrate checkpoint missing", ["calibrate", "landmark", "--checkpoint", "{inputs}/none.pth", "--data",
                                      "{inputs}"], 2, ["none.pth"]),
    ("calibrate protocol unknown", ["calibrate", "landmark", "--checkpoint", "{ckpt}", "--data", "{data}",
                                    "--protocol", "autors"], 2, ["autors"]),
    ("eval levels negative", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--levels", "-1"], 2,
     ["--levels"]),
    ("eval levels not numbers", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--levels", "abc"],
     2, ["abc"]),
    ("eval attack unknown", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--attacks", "fgsm"], 2,
     ["fgsm"]),
    ("eval attack of another task", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--attacks",
                                     "pgd,suppress"], 2, ["'suppress'", "heatmap, vote"]),
    ("eval worst alone", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--attacks", "worst"], 2,
     ["worst"]),
    ("eval model missing", ["eval", "landmark", "--models", "STD={inputs}/none.pth", "--data", "{data}"], 2,
     ["none.pth"]),
    ("eval protocol unknown", ["eval", "landmark", "--models", "{ckpt}", "--data", "{data}", "--protocol",
                               "autors"], 2, ["autors"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    f = _files(tmp)
    yield f
    (Path(f["inputs"]) / "readonly").chmod(stat.S_IRWXU)


def _argv(row: list[str], f: dict[str, str]) -> list[str]:
    argv = [a.format(**f) for a in row]
    if argv[0] == "run" and "--" not in argv:
        argv += ["--", sys.executable, f["script"]]
    return argv


@pytest.mark.parametrize("name,row,code,words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_refused_in_one_line_before_any_work(inputs, tmp_path, name, row, code, words):
    work = tmp_path / "work"
    work.mkdir()
    r = run(amat_cmd() + _argv(row, inputs), work, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("[amat] adapter", "[amat] "))]
    assert r.returncode == code, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert sorted(p.name for p in work.iterdir()) in ([], ["STARTED"]), list(work.iterdir())
    if code == 3:  # the script started, but no optimizer step, no checkpoint, no state
        assert not (work / "ckpt.pt").exists() and not (work / "amat_state.json").exists()
    else:
        assert not (work / "STARTED").exists()


# -- the plain-loop API: exception type and message ------------------------------------------------
def _loop(cfg, ids, loss=None, x=None):
    from amat_hooks import AdversarialLoop, per_sample_mean

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    loss = loss or per_sample_mean(nn.CrossEntropyLoss(reduction="none"))
    x = torch.randn(4, 4) if x is None else x
    return AdversarialLoop(model, loss, cfg).loss((x, torch.tensor([0, 1, 2, 0]), ids))


def _cfg(**kw):
    from amat_hooks.config import AdvConfig

    return AdvConfig(**{"mode": "amat", "delta": 0.5, "xi": [1.0], **kw})


def _load(state):
    from amat_hooks import AdversarialLoop, per_sample_mean

    adv = AdversarialLoop(nn.Linear(4, 3), per_sample_mean(nn.CrossEntropyLoss(reduction="none")), _cfg())
    adv.loss((torch.randn(4, 4), torch.tensor([0, 1, 2, 0]), torch.arange(4)))
    if callable(state):
        state = state(adv.state_dict())
    adv.load_state_dict(state)


def _nan_margin(s):
    s["policy"]["margins"]["values"][0] = math.nan
    return s


API_CASES = [
    ("xi below the CE floor", lambda: _loop(_cfg(xi=[-1.0]), torch.arange(4)), "AdapterError", "at or below 0"),
    ("xi terms", lambda: _loop(_cfg(xi=[1.0, 1.0, 1.0]), torch.arange(4)), "AdapterError", "has 3 value(s)"),
    ("ids None", lambda: _loop(_cfg(), [None] * 4), "AdapterError", "None"),
    ("ids NaN", lambda: _loop(_cfg(), torch.tensor([0.0, math.nan, 2.0, 3.0])), "AdapterError", "float"),
    ("ids floats", lambda: _loop(_cfg(), [0.5, 1.5, 2.5, 3.5]), "AdapterError", "0.5"),
    ("ids all equal", lambda: _loop(_cfg(), torch.zeros(4, dtype=torch.long)), "AdapterError", "tell the samples apart"),
    ("ids a string", lambda: _loop(_cfg(), "abcd"), "AdapterError", "got str"),
    ("ids too few", lambda: _loop(_cfg(), torch.arange(3)), "AdapterError", "3 sample ids for a batch of 4"),
    ("ids 2-D tensor of floats", lambda: _loop(_cfg(), torch.rand(4, 2)), "AdapterError", "is not an integer"),
    ("loss reduces the batch", lambda: _loop(_cfg(), torch.arange(4), lambda o, t: nn.functional.cross_entropy(o, t)),
     "AdapterError", "reduction='none'"),
    ("step a string", lambda: _cfg(delta="0.5").validate(), "AdvConfigError", "--adv-step"),
    ("eps 0", lambda: _cfg(mode="sat", eps=0).validate(), "AdvConfigError", "--adv-eps"),
    ("step size inf", lambda: _cfg(pgd_step_size=math.inf).validate(), "AdvConfigError", "--adv-step-size"),
    ("xi nan", lambda: _cfg(xi=[math.nan]).validate(), "AdvConfigError", "finite"),
    ("mode unknown", lambda: _cfg(mode="pgd").validate(), "AdvConfigError", "unknown mode 'pgd'"),
    ("protocol unknown", lambda: _cfg(protocol="autors").validate(), "AdvConfigError", "autors"),
    ("state without policy", lambda: _load({"foo": 1}), "ValueError", "'policy'"),
    ("state with NaN margins", lambda: _load(_nan_margin), "MarginMismatchError", "NaN"),
    ("uint8 inputs", lambda: _loop(_cfg(), torch.arange(4), x=torch.zeros(4, 4, dtype=torch.uint8)), "AdapterError",
     "uint8"),
]


@pytest.mark.parametrize("name,call,exc,words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_named_error(name, call, exc, words):
    with pytest.raises(Exception) as e:
        call()
    assert type(e.value).__name__ == exc, (type(e.value).__name__, str(e.value))
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


# -- nnUNetv2_train's settings (AMAT_* variables, read before nnU-Net builds anything) ---------------
NNUNET_CASES = [
    ("mode unknown", {"AMAT_MODE": "pgd"}, "pgd"),
    ("step negative", {"AMAT_STEP": "-1"}, "AMAT_STEP"),
    ("step not a number", {"AMAT_STEP": "half"}, "AMAT_STEP"),
    ("xi not numbers", {"AMAT_XI": "abc"}, "AMAT_XI"),
    ("xi two numbers for a 1-term loss", {"AMAT_XI": "0.1,0.2"}, "AMAT_XI"),
    ("epochs 0", {"AMAT_EPOCHS": "0"}, "AMAT_EPOCHS"),
    ("seed not an integer", {"AMAT_SEED": "x"}, "AMAT_SEED"),
    ("protocol unknown", {"AMAT_PROTOCOL": "autors"}, "autors"),
    ("xi source unknown", {"AMAT_XI_SOURCE": "guess"}, "AMAT_XI_SOURCE"),
]


@pytest.mark.parametrize("name,env,words", NNUNET_CASES, ids=[c[0] for c in NNUNET_CASES])
def test_nnunet_settings_refuse_bad_variables(name, env, words):
    pytest.importorskip("nnunetv2")
    from amat_hooks.config import AdvConfigError
    from amat_hooks.integrations.nnunet.settings import read_settings

    with pytest.raises(AdvConfigError) as e:
        read_settings("amat", "Dataset004_Hippocampus", {"AMAT_STEP": "0.5", **env})
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
