"""Which model and which loss the script trains, found from what it creates (``amat run``
patches ``nn.Module.__init__`` and the optimizers): the model is the outermost module owning
the most parameters given to an optimizer; the loss, its first ``torch.nn`` loss module."""
from __future__ import annotations

import torch
from torch import nn


class ScriptModels:
    """The :class:`~amat_hooks.run.host.Runner`'s view of the script's modules (a mixin)."""

    def note_module(self, module: nn.Module) -> None:
        """Every ``nn.Module`` the script creates (patched ``nn.Module.__init__``)."""
        if isinstance(module, nn.modules.loss._Loss):
            self.loss_modules.append(module)
        else:
            self._modules.add(module)

    def find_model(self) -> nn.Module | None:
        """The outermost module owning the most parameters given to an optimizer."""
        if self.model is not None:
            return self.model
        params = {id(p) for opt in list(self._optimizers) for g in opt.param_groups for p in g["params"]}
        if not params:
            return None
        best, best_key = None, None
        for m in list(self._modules):
            n = sum(1 for p in m.parameters() if id(p) in params)
            if n == 0:
                continue
            key = (n, sum(1 for _ in m.modules()))
            if best_key is None or key > best_key:
                best, best_key = m, key
        self.model = best
        if best is not None:
            self.amat_log(f"model: {type(best).__name__} ({sum(p.numel() for p in best.parameters()):,} parameters)")
        return best

    @property
    def criterion(self) -> nn.Module | None:
        """The script's first ``torch.nn`` loss module (generic adapters' default)."""
        return self.loss_modules[0] if self.loss_modules else None

    def training_batch(self) -> bool:
        model = self.find_model()
        return model is not None and model.training and torch.is_grad_enabled()
