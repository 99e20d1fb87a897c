"""The folder nnU-Net searches for ``-tr`` names (via ``nnUNet_extTrainer``): one module,
:mod:`.nnunet_trainers_amat_hooks`, holds them all."""
