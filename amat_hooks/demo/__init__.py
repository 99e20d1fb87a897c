"""``amat demo`` back ends: the plain loop (default) and the real nnU-Net trainer."""
