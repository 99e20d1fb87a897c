"""``AMATDetectionTrainer``: Ultralytics' DetectionTrainer with STD/SAT/AMAT training steps.

Injection without editing Ultralytics: after Ultralytics' own ``_setup_train`` (model,
DDP wrap, EMA, dataloaders) the model's ``criterion`` is wrapped. ``DetectionModel.loss``
runs the clean forward and calls the criterion; the wrapper hands the clean predictions
to the core engine, which attacks with the core PGD, runs the noisy forward and returns
``(L_clean + L_noisy) / 2`` in Ultralytics' own convention (loss x batch size, summed).
Backward, optimizer step, EMA, logging and checkpoints stay Ultralytics'.

What the run reports goes where Ultralytics' own numbers go: ``trainer.metrics`` gains the
epoch's clean and noisy loss items (``train/clean_box_loss`` ... ``train/noisy_dfl_loss``)
and, for AMAT, ``metrics/margin_mean`` and ``metrics/margin_max``, so ``results.csv``,
``results.png`` and every logger callback (``on_fit_epoch_end``: TensorBoard, W&B, MLflow,
ClearML, Comet, DVC) see them; Ultralytics' ``train/*_loss`` columns stay the loss that is
back-propagated (the policy's combination of clean and noisy, ``(L0 + L1) / 2``).

Adversarial settings, in order of precedence: the ``adv=`` argument; the class attribute
set by :meth:`AMATDetectionTrainer.with_config` (for ``YOLO(...).train(trainer=...)``);
the JSON in env ``AMAT_YOLO_CONFIG`` (set by ``amat yolo`` and before a DDP launch, so
the trainers Ultralytics re-creates in DDP subprocesses read the same settings); the
``AMAT_*`` variables of :meth:`AdvConfig.from_env`; on ``resume``, the sidecar.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Hashable, Sequence

import torch

from amat_hooks.integrations.ultralytics.version import check_ultralytics

check_ultralytics()  # one line naming the fix, not an ImportError of E2ELoss below, on Ultralytics < 8.4

from amat_hooks.integrations.ultralytics.offline import offline_amp_check, prepare_offline  # noqa: E402

prepare_offline()  # before Ultralytics is imported: YOLO_OFFLINE decides its ONLINE flag at import

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from amat_hooks.config import AdvConfig, AdvConfigError, force_resume_requested  # noqa: E402
from amat_hooks.engine import AdversarialEngine  # noqa: E402
from amat_hooks.integrations.ultralytics.adapter import YoloAdapter, check_xi, data_identity  # noqa: E402
from amat_hooks.margins import MarginMismatchError  # noqa: E402
from amat_hooks.policies import AMAT  # noqa: E402
from amat_hooks.integrations.ultralytics.settings import (CONFIG_ENV, ValAttack, _config_from, _env_settings,  # noqa: E402
                                                         settings_env_value, unsupported_task)
from amat_hooks.policy_types import StepOutput  # noqa: E402
from amat_hooks.state import StateError, read_state, state_envelope, write_state  # noqa: E402

SIDECAR_NAME = "amat_state.json"
#: Pixel range of the normalised image the attack runs on (``img / 255``).
PIXEL_BOUNDS = (0.0, 1.0)
#: The margin columns of ``trainer.metrics`` (AMAT). "metrics/" puts them in results.png
#: (Ultralytics' ``plot_results`` draws the columns whose names hold "loss" or "metric").
MARGIN_KEYS = {"metrics/margin_mean": "mean", "metrics/margin_max": "max"}


class AdversarialCriterion:
    """Stands in for ``model.criterion`` during training; never serialised.

    Outside a training forward (eval mode, no grad, foreign batch) it is the plain
    Ultralytics criterion. ``deepcopy``/``pickle`` yield ``None`` so EMA copies and
    checkpoints never carry it (Ultralytics re-creates a plain criterion lazily).
    """

    def __init__(self, base: Any, trainer: "AMATDetectionTrainer") -> None:
        self.base = base
        self.trainer = trainer

    def __call__(self, preds: Any, batch: dict[str, Any]):
        model = unwrap_model(self.trainer.model)
        if torch.is_grad_enabled() and model.training and "im_file" in batch:
            return self.trainer.adversarial_loss(preds, batch)
        return self.base(preds, batch)

    def __getattr__(self, name: str) -> Any:  # update(), loss_names, hyp ... of the base
        if name in ("base", "trainer"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self):
        return (type(None), ())


class AMATDetectionTrainer(DetectionTrainer):
    """DetectionTrainer + adversarial training (``--adv none|sat|amat``)."""

    #: Set by :meth:`with_config`; survives DDP because cloudpickle pickles that class by value.
    adv_config: AdvConfig | None = None
    adv_val: ValAttack | None = None

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks=None,
                 adv: AdvConfig | dict | str | None = None, val: ValAttack | None = None) -> None:
        prepare_offline()
        env_cfg, env_val = _env_settings()
        requested = _config_from(adv) or type(self).adv_config or env_cfg
        self.adv_val = (val or type(self).adv_val or env_val or ValAttack()).validate()
        if requested is not None:
            requested = replace(requested, bounds=requested.bounds or PIXEL_BOUNDS).resolved("yolo")
        self.adv_requested = requested
        self.amat_engine: AdversarialEngine | None = None
        self.amat_base_criterion: Any = None
        self._amat_clean_preds: Any = None
        self._amat_items: list[tuple[dict[str, torch.Tensor], bool]] = []
        self._amat_sums: dict[str, torch.Tensor] = {}  # clean / noisy loss items summed over the epoch's batches
        self._amat_batches = 0
        self.amat_epoch_metrics: dict[str, float] = {}
        self.amat_last: StepOutput | None = None
        self.amat_history: list[dict[str, float]] = []
        check_xi(requested)  # before Ultralytics creates the run folder
        super().__init__(cfg, overrides, _callbacks)
        if self.args.task != "detect" and requested is not None and requested.mode != "none":
            raise unsupported_task(self.args.task)

    def amat_log(self, message: str) -> None:
        """Host protocol: the policy's notices go to Ultralytics' log (rank 0 only)."""
        if RANK in {-1, 0}:
            LOGGER.info(message)

    # -- configuration for the Python API --------------------------------------------------
    @classmethod
    def with_config(cls, adv: AdvConfig | None = None, *, val: ValAttack | None = None,
                    **adv_fields: Any) -> type["AMATDetectionTrainer"]:
        """A trainer class carrying its settings, for ``YOLO(...).train(trainer=...)``::

            YOLO("yolov5s.yaml").train(data="bccd.yaml", pretrained=False,
                trainer=AMATDetectionTrainer.with_config(mode="amat", delta=3.5, xi_rule="mean+2std"))
        """
        cfg = adv if adv is not None else AdvConfig(**adv_fields)
        cfg = replace(cfg, bounds=cfg.bounds or PIXEL_BOUNDS).resolved("yolo")
        check_xi(cfg)
        attrs = {"adv_config": cfg, "adv_val": (val or ValAttack()).validate(),
                 "__module__": cls.__module__, "__doc__": cls.__doc__}
        return type(f"{cls.__name__}_{cfg.label}", (cls,), attrs)

    @property
    def adv(self) -> AdvConfig | None:
        """The settings in effect (after resume resolution), or the requested ones."""
        return self.amat_config if self.amat_engine is not None else self.adv_requested

    # -- Ultralytics overrides ---------------------------------------------------------------
    def train(self):
        if self.world_size > 1 and RANK == -1:
            # Ultralytics re-creates this trainer in DDP subprocesses from its arguments only;
            # they inherit the environment, so the settings travel there.
            os.environ[CONFIG_ENV] = settings_env_value(self.adv_requested, self.adv_val)
        return super().train()

    def _setup_train(self):
        with offline_amp_check():
            super()._setup_train()
        self._setup_adversarial()

    def get_validator(self):
        if self.adv_val is not None and self.adv_val.levels:
            from copy import copy

            from amat_hooks.integrations.ultralytics.validator import AdversarialDetectionValidator

            return AdversarialDetectionValidator(
                self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks,
                levels=self.adv_val.levels, attack=self.adv_val.attack, steps=self.adv_val.steps)
        return super().get_validator()

    def run_callbacks(self, event: str):
        if self.amat_engine is not None:
            if event == "on_train_epoch_start":
                self._amat_sums, self._amat_batches = {}, 0
            elif event == "on_train_epoch_end":
                self.amat_engine.epoch_end(self.epoch)  # MarginStore.sync(): every rank runs this
                self.amat_epoch_metrics = self.amat_metrics()
                if RANK in {-1, 0} and isinstance(self.amat_engine.policy, AMAT):
                    LOGGER.info(f"AMAT epoch {self.epoch + 1}: {self.amat_engine.policy.describe()}")
            if event in ("on_train_epoch_end", "on_fit_epoch_end") and self.metrics is not None:
                # every logger (TensorBoard, W&B, MLflow, ClearML, Comet, DVC) reads trainer.metrics here;
                # final_eval replaces it with best.pt's validation, so the columns are put back
                self.metrics.update(self.amat_epoch_metrics)
        super().run_callbacks(event)

    def validate(self):
        """Ultralytics' validation; the metrics it returns become ``trainer.metrics``, so the
        margins and the clean / noisy losses of the epoch join them (results.csv, results.png)."""
        metrics, fitness = super().validate()
        if metrics is not None and self.amat_engine is not None:
            metrics = {**metrics, **self.amat_epoch_metrics}
        return metrics, fitness

    def save_metrics(self, metrics):
        # this epoch's values also when validation was skipped (val=False keeps the old metrics)
        metrics = {**metrics, **self.amat_epoch_metrics}
        if self.csv.is_file():  # Ultralytics writes rows by position: keep the header's column order
            with open(self.csv, encoding="utf-8") as f:
                header = f.readline().strip().split(",")[2:]
            if set(header) == set(metrics):
                metrics = {k: metrics[k] for k in header}
        super().save_metrics(metrics)

    def save_model(self):
        result = super().save_model()
        if self.amat_engine is not None:
            self.write_sidecar()
        return result

    # -- adversarial state ----------------------------------------------------------------------
    @property
    def sidecar_path(self) -> Path:
        return Path(self.wdir) / SIDECAR_NAME

    def dataset_id(self) -> str:
        """Stable id of the training set: hash of its sample ids (resume refuses another set)."""
        ids = sorted(self.sample_ids(self.train_loader.dataset.im_files))
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
        return f"yolo:{len(ids)}:{digest}"

    def sample_ids(self, im_files: Sequence[str]) -> list[Hashable]:
        """Sample id = image path relative to the dataset root (absolute when outside it), so
        margins survive moving the dataset folder. Under mosaic it is the first image's path."""
        root = self.data.get("path") if isinstance(self.data, dict) else None
        out = []
        for f in im_files:
            f = str(f)
            if root:
                rel = os.path.relpath(f, root)
                out.append(f if rel.startswith("..") else rel.replace(os.sep, "/"))
            else:
                out.append(f)
        return out

    def _check_labels(self) -> None:
        ds = self.train_loader.dataset
        missing = [im for im, lb in zip(ds.im_files, getattr(ds, "label_files", [])) if not os.path.isfile(lb)]
        if missing:
            example = missing[0]
            raise AdvConfigError(
                f"{len(missing)} training image(s) have no label file, e.g. {example} (expected "
                f"{ds.label_files[ds.im_files.index(example)]}). Adversarial training needs every image's "
                f"targets; fix the labels path, or mark intentional background images with an EMPTY .txt file")

    def _setup_adversarial(self) -> None:
        saved = None
        if self.resume and self.sidecar_path.is_file():
            try:
                saved = read_state(self.sidecar_path)
            except StateError as e:
                raise AdvConfigError(f"cannot resume: {e}") from None
        cfg = self.adv_requested
        if cfg is None:
            cfg = AdvConfig.from_dict(saved["config"]) if saved else AdvConfig(mode="none")
        self.amat_config = cfg
        if cfg.mode == "none":
            return
        if self.args.task != "detect":
            raise unsupported_task(self.args.task)
        self._check_labels()
        model = unwrap_model(self.model)
        base = getattr(model, "criterion", None) or model.init_criterion()
        self.amat_base_criterion = base
        self.amat_adapter = YoloAdapter(base, sample_ids=self.sample_ids, forward=self.amat_forward,
                                        record_items=lambda items, clean: self._amat_items.append((items, clean)),
                                        identity=data_identity(self.args.data))
        check_xi(cfg, self.amat_adapter.term_names, self.amat_adapter.term_floors)
        policy = cfg.build_policy(dataset_id=self.dataset_id(), log=self.amat_log,
                                  calibrate_hint=f"amat calibrate yolo model=<STD best.pt> data={self.args.data}")
        if saved is not None:
            try:
                policy.load_state_dict(saved["policy"], force=force_resume_requested())
            except (MarginMismatchError, ValueError) as e:
                raise AdvConfigError(f"cannot resume the adversarial state in {self.sidecar_path}: {e}") from None
            if isinstance(policy, AMAT) and RANK in {-1, 0}:
                LOGGER.info(f"amat-hooks: restored {len(policy.margins)} margins from {self.sidecar_path} "
                            f"(epoch {saved['epochs']}, digest {policy.margins.digest()})")
            self.amat_history = list(saved["history"])
            if saved["epochs"] != self.start_epoch and RANK in {-1, 0}:
                LOGGER.warning(f"AMAT: margins in {self.sidecar_path} are from epoch {saved['epochs']}, "
                               f"the weights from epoch {self.start_epoch}; training continues with them")
        elif self.resume and RANK in {-1, 0}:
            LOGGER.warning(f"AMAT: resuming without {self.sidecar_path}: margins start again at Delta")
        model.criterion = AdversarialCriterion(base, self)
        self.amat_engine = AdversarialEngine(policy, self.amat_adapter, host=self)
        self.amat_epoch_metrics = dict.fromkeys(self.amat_metric_keys(), 0.0)
        if RANK in {-1, 0}:
            LOGGER.info(f"amat-hooks: adapter: {self.amat_adapter.describe()}")
            LOGGER.info(f"amat-hooks: {cfg.label} ({cfg.to_json()}), {policy.describe()}")

    def amat_state(self) -> dict[str, Any]:
        assert self.amat_engine is not None
        return state_envelope("ultralytics", self.amat_config, self.amat_engine.policy, self.amat_adapter,
                              epochs=self.epoch + 1, checkpoint=str(self.last.name), history=self.amat_history)

    def write_sidecar(self) -> Path:
        """Margins, xi and settings next to ``last.pt`` (atomic: never a truncated file)."""
        return write_state(self.sidecar_path, self.amat_state())

    def amat_metric_keys(self) -> list[str]:
        """``train/clean_<item>`` and ``train/noisy_<item>`` for each of Ultralytics' loss items
        (``box_loss, cls_loss, dfl_loss``), then, for AMAT, the margin columns."""
        items = [f"{n}_loss" for n in self.amat_adapter.term_names]
        keys = [f"train/{kind}_{k}" for kind in ("clean", "noisy") for k in items]
        return keys + (list(MARGIN_KEYS) if isinstance(self.amat_engine.policy, AMAT) else [])

    def amat_metrics(self) -> dict[str, float]:
        """This epoch's means of the clean and the noisy loss items (over batches, as Ultralytics
        averages its ``tloss``) and AMAT's margin mean and max after the epoch's updates."""
        if self.amat_engine is None:
            return {}
        n = max(self._amat_batches, 1)
        out = {k: 0.0 for k in self.amat_metric_keys()}
        out.update({k: round(float(v) / n, 5) for k, v in self._amat_sums.items() if k in out})
        if isinstance(self.amat_engine.policy, AMAT):
            s = self.amat_engine.policy.margins.summary()
            out.update({k: round(float(s[stat]), 5) for k, stat in MARGIN_KEYS.items()})
        return out

    # -- one adversarial step (called by AdversarialCriterion) ----------------------------------
    def adversarial_loss(self, preds: Any, batch: dict[str, Any]):
        """Clean predictions come from DetectionModel.loss; the engine does the rest."""
        self._amat_clean_preds = preds
        self._amat_items.clear()
        try:
            out = self.amat_engine.step(unwrap_model(self.model), batch)
        finally:
            self._amat_clean_preds = None
        self.amat_last = out
        clean = next(d for d, is_clean in self._amat_items if is_clean)
        noisy = next((d for d, is_clean in self._amat_items if not is_clean), None)
        self._amat_batches += 1
        for kind, items in (("clean", clean), ("noisy", noisy)):
            for k, v in (items or {}).items():
                key = f"train/{kind}_{k}"
                self._amat_sums[key] = self._amat_sums.get(key, 0.0) + v.detach().float()
        if noisy is None:
            return out.loss, clean
        # Ultralytics' loss columns show what is back-propagated: the policy's combination of the two
        policy = self.amat_engine.policy
        return out.loss, {k: policy.combine(clean[k], noisy[k]) for k in clean}

    def amat_forward(self, model: torch.nn.Module, x: torch.Tensor, clean: bool) -> Any:
        """Predictions for x: for the step's clean input those DetectionModel.loss already
        computed (the policy says which input is the clean one), else a forward pass."""
        if clean and self._amat_clean_preds is not None:
            return self._amat_clean_preds
        return model(x)
