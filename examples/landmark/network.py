"""The example's network under its original module name; written once, in
``amat_hooks/examples/landmark_network.py`` (which names ``amat_hooks.zoo.multitask_unet``'s
network the original way)."""
from amat_hooks.examples.landmark_network import UNet_Pretrained  # noqa: F401
