"""Multi-Task U-Net landmark detection (Yao et al. 2020), as used in the AMAT paper
(section 3.6): the adapter (its batches and three loss terms), the task (``amat
calibrate|eval|grid landmark``) and the plugin. The model, the ISBI 2015 reader and the
generated data live in :mod:`amat_hooks.zoo`.
"""
