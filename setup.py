"""Build hook only (metadata lives in pyproject.toml).

Installs ``amat_hooks_nnunet.pth`` at the top of site-packages, for wheels and for
``pip install -e .``: a start-up line that appends amat-hooks' nnU-Net trainer folder to
``nnUNet_extTrainer`` (keeping folders the user already set), so ``nnUNetv2_train ...
-tr nnUNetTrainerAMAT`` finds our trainers without writing into nnunetv2.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "amat_hooks_nnunet.pth"
PTH_SOURCE = Path(__file__).resolve().parent / "amat_hooks" / "integrations" / "nnunet" / PTH_NAME


class build_py_with_pth(build_py):
    """build_py + the .pth file at the root of what gets installed."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # editable wheels are assembled from install_lib, not build_lib
            root = self.get_finalized_command("install").install_lib
        else:
            root = self.build_lib
        self.copy_file(str(PTH_SOURCE), str(Path(root) / PTH_NAME), preserve_mode=False)

    def get_outputs(self, *args, **kwargs):
        outputs = super().get_outputs(*args, **kwargs)
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PTH_NAME))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
