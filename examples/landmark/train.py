"""Train the Multi-Task U-Net for cephalometric landmark detection (plain PyTorch).

The script lives in the package (``amat_hooks/examples/landmark_train.py``, so a wheel
user has it too: ``python -m amat_hooks.examples.landmark_train``); this file runs it from
a checkout, ``python examples/landmark/train.py --data DIR``, and ``amat run --adv amat ...
-- python examples/landmark/train.py ...`` adds AMAT from outside.
"""
from amat_hooks.examples.landmark_train import L1Loss, dice_loss, main  # noqa: F401  (the script's names)

if __name__ == "__main__":
    main()
