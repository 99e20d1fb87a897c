"""``amat eval nnunet`` / ``amat grid nnunet``: robustness of nnU-Net models (2d and 3d).

A sample is what training keys a margin by: one 2D slice for 2d (the paper's nnU-Net
models are 2D and their samples are slices), one patch per case for 3d configurations
(:mod:`.slices`), prepared as nnU-Net's validation pipeline prepares it: nnU-Net's
preprocessing (z-scored intensities: the L2 noise lives in that space, no [0, 1] clamp),
crop/pad to the patch size, deep-supervision targets. The attack objective is the
trainer's own loss per sample (:func:`per_sample_terms`). ADI averages per-sample Dice over
the samples whose label has foreground (Dice of an empty sample is undefined;
``--include-empty`` scores them 1 when nothing is predicted); TVDI sums TP/FP/FN over all
evaluated samples. Voxels added by padding are ignored.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from amat_hooks.config import ENV_NAMES
from amat_hooks.state import CHECKPOINT_KEY
from amat_hooks.tasks import TaskError
from amat_hooks.evaluation import EvalBatch, EvalTask
from amat_hooks.evaluation.metrics import adi, dice_counts, dice_from_counts, tvdi
from amat_hooks.integrations.nnunet.adapter import NnUNetAdapter, NnUNetBatch
from amat_hooks.integrations.nnunet.slices import load_cases, prepared_samples


class NnUNetEvalError(TaskError):
    """A results folder, checkpoint or test split needed for evaluation is missing."""


def load_trainer(dataset: str, configuration: str, fold: str, trainer_name: str, plans: str = "nnUNetPlans",
                 checkpoint: str = "checkpoint_final.pth", device: str = "cpu", missing: str = "checkpoint"):
    """The trained model exactly as nnU-Net builds it (network, loss, plans), from its results folder."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from amat_hooks.integrations.nnunet.names import parse_trainer_name

    parse_trainer_name(trainer_name)  # a misspelt name of ours: the right spelling, before nnU-Net's search

    fold_arg: Any = fold if fold == "all" else int(fold)
    ckpt = checkpoint_path(dataset, configuration, fold, trainer_name, plans, checkpoint)
    if ckpt is not None and not ckpt.is_file():
        raise NnUNetEvalError(f"no {missing} at {ckpt}; train it first: nnUNetv2_train {dataset} "
                              f"{configuration} {fold} -tr {trainer_name}" + ("" if plans == "nnUNetPlans" else f" -p {plans}"))
    chatter = io.StringIO()  # nnU-Net's banner and trainer log lines: shown only on failure
    try:
        before = existing_logs(ckpt.parent if ckpt is not None else None)
        with contextlib.redirect_stdout(chatter), _saved_settings(dataset, configuration, fold, trainer_name,
                                                                  plans, checkpoint):
            trainer = get_trainer_from_args(str(dataset), configuration, fold_arg, trainer_name, plans,
                                            device=torch.device(device))
            ckpt = Path(trainer.output_folder) / checkpoint
            if not ckpt.is_file():
                raise NnUNetEvalError(f"no checkpoint {ckpt}; train the model first: nnUNetv2_train {dataset} "
                                      f"{configuration} {fold} -tr {trainer_name}")
            trainer.initialize()
            trainer.load_checkpoint(str(ckpt))
    except Exception:
        sys.stdout.write(chatter.getvalue())
        raise
    drop_load_log(trainer, before)
    trainer.network.eval()
    return trainer


def existing_logs(fold_folder: str | os.PathLike | None) -> set[Path]:
    folder = Path(fold_folder) if fold_folder is not None else None
    return set(folder.glob("training_log_*.txt")) if folder is not None and folder.is_dir() else set()


def drop_load_log(trainer, before: set[Path]) -> None:
    """Building an nnU-Net trainer starts a ``training_log_<time>.txt`` in its fold folder
    (nnU-Net's citation banner). A model that is only loaded (``amat eval``, ``amat
    calibrate``) must not leave such a log next to the training logs: the one this trainer
    started is removed (if it is new) and the trainer logs nowhere from here on."""
    path = Path(getattr(trainer, "log_file", "") or "")
    if path.name.startswith("training_log_") and path not in before and path.is_file():
        try:
            path.unlink()
        except OSError:
            pass
    trainer.log_file = os.devnull


#: checkpoint config key -> environment variable (xi is not passed: the trainer restores it
#: from the checkpoint itself)
_ENV_OF = {k: v for k, v in ENV_NAMES.items() if k != "xi"}


def checkpoint_path(dataset, configuration, fold, trainer_name, plans, checkpoint) -> Path | None:
    """Where nnU-Net keeps this model's checkpoint (None if the dataset is unknown)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except Exception:
        return None
    return (Path(os.environ.get("nnUNet_results", "")) / name / f"{trainer_name}__{plans}__{configuration}"
            / f"fold_{fold}" / checkpoint)


@contextlib.contextmanager
def _saved_settings(dataset, configuration, fold, trainer_name, plans, checkpoint):
    """Build the trainer with the adversarial settings it was TRAINED with (read from its
    checkpoint), not whatever ``AMAT_*`` variables this shell has: evaluation must not need
    ``AMAT_EPS`` for a SAT model, and AMAT's margin table only loads under its own Delta."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AMAT_") and k != "AMAT_NETWORK_GUARD"}
    env: dict[str, str] = {"AMAT_XI_SOURCE": "online"}
    ckpt = checkpoint_path(dataset, configuration, fold, trainer_name, plans, checkpoint)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False).get(CHECKPOINT_KEY) \
            if ckpt is not None and ckpt.is_file() else None
    except Exception:  # not a torch checkpoint: nnU-Net's own error follows
        state = None
    for key, value in ((state or {}).get("config") or {}).items():
        if key in _ENV_OF and value is not None:
            env[_ENV_OF[key]] = str(value)
    if (state or {}).get("xi") is not None:  # the thresholds it trained with (the authors' Dice ones have no file)
        env["AMAT_XI"] = ",".join(repr(float(v)) for v in state["xi"])
    for k in saved:
        os.environ.pop(k)
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def split_cases(trainer, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(case, data [C, Z, Y, X], seg [1, Z, Y, X]) of the fold's ``val`` split (preprocessed)
    or of the raw ``test`` split (``imagesTs``/``labelsTs``, preprocessed here by nnU-Net's
    own preprocessor)."""
    if split in ("train", "val"):
        tr, val = trainer.do_split()
        yield from load_cases(trainer, sorted(str(k) for k in (tr if split == "train" else val)))
        return
    if split != "test":
        raise NnUNetEvalError(f"unknown split {split!r}; use train, val or test")
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    raw = Path(nnUNet_raw or "") / trainer.plans_manager.dataset_name
    ending = trainer.dataset_json["file_ending"]
    labels = sorted((raw / "labelsTs").glob(f"*{ending}"))
    if not labels:
        raise NnUNetEvalError(f"no test labels in {raw / 'labelsTs'}; the test split needs imagesTs/ and "
                              f"labelsTs/ (amat nnunet-hippocampus writes them), or use --split val")
    n_ch = len(trainer.dataset_json.get("channel_names", trainer.dataset_json.get("modality", {"0": ""})))
    pp = DefaultPreprocessor(verbose=False)
    for lab in labels:
        case = lab.name[:-len(ending)]
        images = [str(raw / "imagesTs" / f"{case}_{c:04d}{ending}") for c in range(n_ch)]
        missing = [i for i in images if not os.path.isfile(i)]
        if missing:
            raise NnUNetEvalError(f"test case {case}: image(s) missing {missing}")
        data, seg, _ = pp.run_case(images, str(lab), trainer.plans_manager, trainer.configuration_manager,
                                   trainer.dataset_json)
        yield case, data, seg


class NnUNetSliceEvalTask(EvalTask):
    """Samples of a split (2d slices, or one 3d patch per case), batched; see the module
    docstring for what is measured."""

    name = "nnunet"
    metric = "ADI"
    higher_is_better = True
    bounds = None  # z-scored inputs: no clamp

    def __init__(self, trainer, split: str = "val", batch_size: int | None = None, include_empty: bool = False,
                 max_cases: int | None = None, max_slices: int | None = None, every_class: bool = False) -> None:
        patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
        if len(patch) not in (2, 3):
            raise NnUNetEvalError(f"amat eval nnunet evaluates 2d and 3d configurations; "
                                  f"{trainer.configuration_name!r} has a {len(patch)}D patch")
        self.trainer, self.model, self.patch = trainer, trainer.network, patch
        self.unit = "slice" if len(patch) == 2 else "case"  # what one sample is (as training counts it)
        if batch_size is None:  # slices are small; a 3d patch is what the plans batch
            batch_size = 16 if len(patch) == 2 else int(trainer.configuration_manager.batch_size)
        self.split, self.batch_size, self.include_empty = split, batch_size, include_empty
        self.max_cases, self.max_slices = max_cases, max_slices
        #: the authors' ADI sample set (docs/protocols.md row 14): only the slices that hold every
        #: foreground class present in their case
        self.every_class = every_class
        lm = trainer.label_manager
        if lm.has_regions:
            raise NnUNetEvalError("region-based nnU-Net models are not supported by amat eval nnunet yet")
        self.labels = [int(v) for v in lm.foreground_labels]
        self.adapter = NnUNetAdapter(trainer.loss, trainer.enable_deep_supervision)
        self._slices = self._prepare()

    def _prepare(self) -> list[tuple[str, Tensor, list[Tensor], Tensor]]:
        out = []
        cases = split_cases(self.trainer, self.split)
        if self.max_cases is not None:
            cases = itertools.islice(cases, self.max_cases)
        by_case: dict[str, list] = {}
        for case, z, image, segs, valid in prepared_samples(self.trainer, cases):
            if not self.include_empty and not bool(((segs[0][0] > 0) & valid).any()):
                continue
            row = (f"{case}:{z}" if self.unit == "slice" else f"{case}:patch", image, segs, valid)
            by_case.setdefault(case, []).append(row)
        for rows in by_case.values():
            out += self._every_class(rows) if self.every_class else rows
        if self.max_slices is not None:
            out = out[:self.max_slices]
        if not out:
            raise NnUNetEvalError(f"the {self.split} split has no {self.unit} with foreground to evaluate")
        return out

    def _every_class(self, rows: list) -> list:
        """The rows of one case that hold every foreground label present in the case."""
        present = [{lab for lab in self.labels if bool(((r[2][0][0] == lab) & r[3].bool()).any())} for r in rows]
        case = set().union(*present) if present else set()
        return [r for r, p in zip(rows, present) if case and case <= p]

    def size(self) -> int:
        return -(-len(self._slices) // self.batch_size)

    def describe_scored(self, samples: int) -> str:
        cases = len({key.rsplit(":", 1)[0] for key, *_ in self._slices[:samples]})
        empty = " holding every foreground class of their case" if self.every_class else \
            "" if self.include_empty else " with foreground"
        if self.unit == "case":
            return f"{samples} {self.split} case{'' if samples == 1 else 's'}{empty} (one 3d patch each)"
        return (f"{samples} {self.split} slice{'' if samples == 1 else 's'}{empty} of {cases} "
                f"case{'' if cases == 1 else 's'}")

    def batches(self) -> Iterable[EvalBatch]:
        dev = self.trainer.device
        for s in range(0, len(self._slices), self.batch_size):
            chunk = self._slices[s:s + self.batch_size]
            x = torch.stack([c[1] for c in chunk]).to(dev)
            segs = [torch.stack([c[2][i] for c in chunk]).to(dev) for i in range(len(chunk[0][2]))]
            valid = torch.stack([c[3] for c in chunk]).to(dev)
            target = segs if self.adapter.deep_supervision else segs[0]
            yield EvalBatch(key=chunk[0][0], x=x, target=NnUNetBatch(data=x, target=target, valid=valid,
                                                                    ids=[c[0] for c in chunk]),
                            ids=[training_id(c[0]) for c in chunk])

    def measure(self, x: Tensor, target: NnUNetBatch) -> list[list[float]]:
        segs, valid = _segs(target), target.valid
        out = self.model(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        pred = logits.argmax(1) * valid
        return dice_counts(pred.cpu(), (segs[0][:, 0].long() * valid).cpu(), labels=self.labels).tolist()

    # -- segmentation objectives (segpgd, cospgd, mce, the radius run): logits and labels ---
    def segmentation_logits(self, x: Tensor) -> Tensor:
        """The full-resolution logits ``[N, C, *patch]`` (deep supervision's first output)."""
        out = self.model(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def segmentation_labels(self, target: NnUNetBatch, repeats: int) -> Tensor:
        lab = _segs(target)[0][:, 0].long()
        return lab.repeat(repeats, *([1] * (lab.dim() - 1)))

    def segmentation_valid(self, target: NnUNetBatch, repeats: int) -> Tensor:
        """Pixels added by padding to the patch size are not scored, and not attacked."""
        valid = target.valid
        return valid.bool().repeat(repeats, *([1] * (valid.dim() - 1)))

    def segmentation_foreground(self) -> list[int]:
        return list(self.labels)

    def sample_scores(self, stats) -> list[float]:
        return dice_from_counts(torch.tensor(stats, dtype=torch.float64).reshape(-1, 3)).tolist()

    def reduce(self, stats) -> dict[str, float]:
        counts = torch.tensor([row for s in stats for row in s], dtype=torch.float64)
        return {"ADI": adi(counts), "TVDI": tvdi(counts)}


def training_id(key: str) -> tuple[str, int]:
    """``"case:z"`` -> ``(case, z)``, the id nnUNetTrainerAMAT keys a slice's margin by (3d: ``(case, 0)``)."""
    case, _, z = key.rpartition(":")
    return (case, 0 if z == "patch" else int(z))


def _segs(batch: NnUNetBatch) -> list[Tensor]:
    return list(batch.target) if isinstance(batch.target, (list, tuple)) else [batch.target]
