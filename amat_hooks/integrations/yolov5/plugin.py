"""The classic YOLOv5 plugin: its adapter for ``amat run`` (the unmodified ``train.py``) and
the ``yolov5`` task. Importing it imports neither the checkout nor Ultralytics."""
from __future__ import annotations

from typing import Any

from amat_hooks.hookspecs import hookimpl
from amat_hooks.integrations.yolov5.adapter import YoloV5Adapter, is_yolov5_batch, script_loss_module


@hookimpl
def amat_adapter(batch: Any, host: Any) -> YoloV5Adapter | None:
    """``train.py``'s batches, once the script has built its model (``amat run``)."""
    find_model = getattr(host, "find_model", None)
    if not is_yolov5_batch(batch) or script_loss_module() is None or find_model is None or find_model() is None:
        return None
    return YoloV5Adapter.for_model(find_model())


@hookimpl
def amat_tasks():
    from amat_hooks.integrations.yolov5.task import YoloV5Task

    return [YoloV5Task()]
