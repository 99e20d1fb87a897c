"""The example's ISBI 2015 data loader under its original module name; written once, in
``amat_hooks/examples/landmark_data.py``."""
from amat_hooks.examples.landmark_data import ISBI_FOLDERS, Cephalometric, parse_ids  # noqa: F401
