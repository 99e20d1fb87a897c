"""Ultralytics YOLO integration.

The adapter: ``AMATDetectionTrainer`` (trainer.py), the batch hooks and ``amat yolo``
(plugin.py), per-image loss terms from Ultralytics' criterion (terms.py). The task (for
``amat calibrate|eval|grid yolo``): task.py, with ``YoloEvalTask`` (evaluate.py), the clean
terms for calibration (calibrate.py) and the adversarial validator (validator.py). Data:
the BCCD converter (bccd.py) and a generated detection dataset (synth.py).

Importing this package does not import Ultralytics; import the submodules for that.
"""
