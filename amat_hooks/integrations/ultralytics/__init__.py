"""Ultralytics YOLO integration: ``AMATDetectionTrainer`` (trainer.py), the adversarial
validator (validator.py), per-image loss terms from Ultralytics' criterion (terms.py),
``amat yolo`` / ``amat calibrate yolo`` (plugin.py), ``amat eval yolo`` / ``amat grid yolo``
(eval_commands.py over the core's evaluation with ``YoloEvalTask``, evaluate.py), the BCCD
converter (bccd.py) and a generated detection dataset (synth.py).

Importing this package does not import Ultralytics; import the submodules for that.
"""
