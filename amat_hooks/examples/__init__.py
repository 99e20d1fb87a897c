"""Example training scripts shipped with the package, so a wheel user can run what the
docs and the CLI's hints name: ``python -m amat_hooks.examples.landmark_train --data DIR``
(the Multi-Task U-Net landmark script; ``amat run ... -- python -m
amat_hooks.examples.landmark_train ...`` adds AMAT from outside). They are ordinary scripts:
nothing here imports a hook, a patch or an adversarial policy."""
