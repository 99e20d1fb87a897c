"""The classic ultralytics/yolov5 ``train.py`` (the paper's detector: box / obj / cls terms),
run unmodified through ``amat run``: its adapter (batches, per-image terms from the script's
own ``ComputeLoss``), its task (``amat calibrate|eval|grid yolov5``) and its plugin. The
user's checkout is imported and run, never copied (it is AGPL-3.0)."""
