"""Ultralytics YOLO integration (Ultralytics >= 8.4, the ``detect`` task).

The host: ``AMATDetectionTrainer`` (trainer.py) and the adversarial validator (validator.py);
the adapter: ``YoloAdapter`` and the per-image box / cls / dfl terms of Ultralytics' own
criterion (adapter.py); ``amat yolo`` and ``amat bccd`` (plugin.py); the task for ``amat
calibrate|eval|grid yolo``: task.py, with ``YoloEvalTask`` (evaluate.py) and the augmented
calibration images (calibrate.py); offline.py keeps Ultralytics off the network, version.py
checks its version at first use.

Importing this package does not import Ultralytics; import the submodules for that.
"""
