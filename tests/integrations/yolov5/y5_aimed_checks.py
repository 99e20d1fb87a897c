"""Run by test_yolov5_aimed.py in a subprocess (the checkout's top-level ``models``/``utils``
must not leak into the test process): YoloV5EvalTask's predictions for the attacks aimed at mAP
against the checkout's own NMS on the same forward, and its truth against val.py's boxes. Prints JSON."""
import json
import sys
from pathlib import Path

import torch

from amat_hooks.integrations.yolov5.task import YoloV5EvalTask

checkout, weights, data_yaml = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
task = YoloV5EvalTask(checkout, weights, data_yaml, imgsz=64, batch=4, split="val")
b = next(iter(task.batches()))
with torch.no_grad():
    boxes, log_conf = task.detection_predictions(b.x)
    kept = task._nms(task.model.eval()(b.x)[0], 0.001, 0.6, multi_label=True, max_det=300)  # val.py's NMS
truth = task.detection_truth(b.target, 2)
out = {"rows": len(truth), "images": len(kept), "checked": 0, "box_err": 0.0, "conf_err": 0.0, "truth_err": 0.0}
h, w = b.x.shape[2:]
targets = b.target[1]
for i, pred in enumerate(kept):
    labels = targets[targets[:, 0] == i, 1:]
    tb = task._xyxy(labels[:, 1:5] * torch.tensor([w, h, w, h]))
    out["truth_err"] = max(out["truth_err"], float((truth[i][0] - tb).abs().max()) if len(tb) else 0.0)
    assert truth[i][1].tolist() == labels[:, 0].long().tolist()
    for p in pred[:5]:
        err = (boxes[i] - p[:4]).abs().amax(1)
        a = int(err.argmin())
        out["box_err"] = max(out["box_err"], float(err[a]))
        out["conf_err"] = max(out["conf_err"], abs(float(log_conf[i, a, int(p[5])].exp()) - float(p[4])))
        out["checked"] += 1
print(json.dumps(out))
