"""The folder nnU-Net searches for ``-tr`` names (via ``nnUNet_extTrainer``).

nnU-Net imports each file here as a top-level module until one defines the requested
class, so every file holds one trainer whose ``__name__`` equals its ``-tr`` name.
"""
