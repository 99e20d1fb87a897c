"""Ultralytics YOLO integration: ``AMATDetectionTrainer`` (trainer.py), the adversarial
validator (validator.py), per-image loss terms from Ultralytics' criterion (terms.py),
``amat yolo`` / ``amat calibrate yolo`` / ``amat eval yolo`` (plugin.py), the BCCD
converter (bccd.py) and a generated detection dataset (synth.py).

Importing this package does not import Ultralytics; import the submodules for that.
"""
