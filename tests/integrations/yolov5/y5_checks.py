"""Run by test_yolov5.py in a subprocess with a classic YOLOv5 checkout on sys.path (its
top-level ``models``/``utils`` packages must not leak into the test process): the adapter
on a real ``train.py``-style batch, against the checkout's own ComputeLoss. Prints JSON."""
import json
import sys
from pathlib import Path

import torch
import yaml

checkout, data_yaml = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(checkout))

from models.yolo import Model  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402

from amat_hooks import AMAT, SAT, AdversarialEngine, AttackSettings  # noqa: E402
from amat_hooks.integrations.yolov5.adapter import YoloV5Adapter, loss_with_terms, script_loss_module  # noqa: E402

torch.manual_seed(0)
hyp = yaml.safe_load((checkout / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
data = yaml.safe_load(data_yaml.read_text())
model = Model(str(checkout / "models" / "yolov5n.yaml"), ch=3, nc=len(data["names"]))
model.hyp, model.nc = hyp, len(data["names"])
model.train()
loader, _ = create_dataloader(str(Path(data["path"]) / data["train"]), 64, 4, 32, hyp=hyp, augment=True,
                              shuffle=False, workers=0)
batch = next(iter(loader))
imgs, targets, paths, shapes = batch
out: dict = {"dtype": str(imgs.dtype), "instances": int(targets.shape[0])}
adapter = YoloV5Adapter(ComputeLoss(model), script_loss_module())
x = adapter.inputs(batch)
b = x.shape[0]

# 1. per-image terms against a fresh ComputeLoss of the script's class on the same predictions
with torch.no_grad():
    preds = model(x)
    _, _, terms = loss_with_terms(adapter.loss, adapter.module, preds, targets)
    own_loss, own_items = ComputeLoss(model)(preds, targets)
out["terms_shape"] = list(terms.shape)
out["sum_vs_items_times_b"] = float((terms.sum(0) - own_items * b).abs().max())
out["sum_vs_loss"] = float((terms.sum() - own_loss.sum()).abs())
# a single image's terms do not depend on the other images' objectness
handed = adapter.with_inputs(batch, torch.cat([x, x]))
out["handed_rows"] = int(handed[0].shape[0])
out["handed_instances"] = int(handed[1].shape[0])
out["handed_index_max"] = float(handed[1][:, 0].max())
out["handed_float"] = handed[0].is_floating_point()
out["handed_scale_ok"] = bool(torch.allclose(handed[0][:b] / 255, x, atol=1e-6))
with torch.no_grad():
    p2 = model(torch.cat([x, x]))
    l2, i2 = ComputeLoss(model)(p2, handed[1])
out["handed_loss_over_clean"] = float(l2.sum() / own_loss.sum())  # summed over rows: 2x

# 2. SAT: every noise norm equals eps (letterboxed images without augmentation: no pixel at 0 or 1)
plain, _ = create_dataloader(str(Path(data["path"]) / data["train"]), 64, 4, 32, hyp=hyp, augment=False,
                             shuffle=False, workers=0)
plain_batch = next(iter(plain))
px = adapter.inputs(plain_batch)
out["plain_pixel_range"] = [float(px.min()), float(px.max())]
sat = AdversarialEngine(SAT(0.5, AttackSettings(steps=3, bounds=(0.0, 1.0))), adapter)
pert = sat.attack(model, plain_batch)
out["sat_norm_err"] = float((pert.attack.noise_norm - 0.5).abs().max())
out["sat_measured_norm_err"] = float(((pert.x_adv - px).flatten(1).norm(dim=1) - 0.5).abs().max())
out["sat_in_bounds"] = bool(pert.x_adv.min() >= 0 and pert.x_adv.max() <= 1)

# 3. AMAT: Algorithm 1 lines 9-12 by hand, for an xi every sample meets and one none meets
ids = adapter.ids(batch)
out["ids_are_paths"] = ids == list(paths)
for name, xi in (("loose", [1e3, 1e3, 1e3]), ("tight", (terms.min(0).values * 0.5).tolist())):
    pol = AMAT(delta=0.5, xi=xi, attack=AttackSettings(steps=3, bounds=(0.0, 1.0)))
    eng = AdversarialEngine(pol, adapter)
    pert = eng.attack(model, batch)
    with torch.no_grad():
        noisy = adapter.output_terms(batch, model(pert.x_adv))
    eng.observe(pert, noisy)
    norms = (pert.x_adv - x).flatten(1).double().norm(dim=1)
    acc = (noisy < torch.tensor(xi)).all(1)
    expected = torch.where(acc, torch.full_like(norms, 0.5 + 0.5), (norms + 0.5) / 2)  # E += Delta | (|d| + E)/2
    out[f"amat_{name}_margin_err"] = float((pol.margins.get(ids).double() - expected).abs().max())
    out[f"amat_{name}_accepted"] = int(acc.sum())
print(json.dumps(out))
