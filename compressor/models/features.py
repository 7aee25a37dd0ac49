"""Read intermediate activations by module path through forward hooks (as torchdistill does)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import torch
from torch import nn


class FeatureRecorder:
    """Context manager that records the outputs of the named submodules of ``model``.

    >>> with FeatureRecorder(model, ["cascades.0.block.relu2"]) as recorder:
    ...     model(zero_filled, kspace, mask)
    >>> recorder.features["cascades.0.block.relu2"].shape
    torch.Size([B, 32, H, W])

    Unknown paths raise ``KeyError`` listing the module's paths.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        modules = dict(model.named_modules())
        self.paths = list(dict.fromkeys(paths))
        missing = [p for p in self.paths if p not in modules]
        if missing:
            raise KeyError(f"no module {missing} in {type(model).__name__}; known: {sorted(m for m in modules if m)}")
        self._modules = {p: modules[p] for p in self.paths}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> FeatureRecorder:
        for path, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path: str):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.features[path] = output

        return record

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.features.clear()
