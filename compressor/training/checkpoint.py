"""Atomic, code-free persistence: weights as safetensors, resume state via ``torch.load(weights_only=True)``.

Every file is written to a temporary name in the same folder and renamed when complete, so a run killed at
any moment leaves either the previous complete file or the new one, never half of one. Nothing here unpickles
arbitrary objects: loading a checkpoint never executes code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compressor import rundir
from compressor.errors import InputError
from compressor.io import write_atomic
from compressor.models import CascadeModel, ModelOptions, build_model
from compressor.rundir import StageRecord


def save_weights(path: Path, module: nn.Module) -> Path:
    """The module's state dict as safetensors (tensors only, contiguous copies)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return write_atomic(path, lambda p: save_file(state, str(p)))


def load_weights(path: Path, module: nn.Module) -> nn.Module:
    """Load safetensors weights into ``module`` (strict: every key must match)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputError(f"not a readable safetensors file ({error})", path) from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise InputError(f"weights do not fit {type(module).__name__}: {str(error).splitlines()[1].strip()}",
                         path) from None
    if missing or unexpected:
        raise InputError(f"weights do not fit {type(module).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}", path)
    return module


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Resume state (optimizer, scheduler, epoch, history): plain containers of tensors and numbers."""
    return write_atomic(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any]:
    """Resume state written by :func:`save_state`. Only plain containers of tensors and numbers are unpickled
    (``weights_only=True``); anything else is refused with one line, and nothing in the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError("not a plain-tensor checkpoint (it holds other Python objects); it will not be loaded. "
                         "Delete it to retrain the stage from its start", path) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise InputError(f"not a readable checkpoint ({error.__class__.__name__})", path) from None


@dataclass
class LoadedStage:
    """A trained model restored from a stage directory, with its ``stage.json`` record."""

    model: CascadeModel
    record: StageRecord


def load_stage_model(stage_dir: Path, weights: str = rundir.BEST_WEIGHTS) -> LoadedStage:
    """Rebuild the stage's output model from ``stage.json`` and load ``<weights>.safetensors`` (eval mode;
    ``weights``: :data:`~compressor.rundir.BEST_WEIGHTS` or :data:`~compressor.rundir.LAST_WEIGHTS`)."""
    stage_dir = Path(stage_dir)
    record = rundir.read_stage(stage_dir)
    if not record.complete:
        raise InputError(f"stage did not finish training ({rundir.STAGE_FILE} says complete=false)", stage_dir)
    model = build_model(record.arch, ModelOptions.from_dict(record.model_options, stage_dir / rundir.STAGE_FILE))
    load_weights(stage_dir / rundir.weights_file(weights), model)
    return LoadedStage(model.eval(), record)
