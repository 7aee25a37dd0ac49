"""Reconstruction models, built from architecture names.

Names are parsed by family. ``dNcM`` is a DC-CNN with N ≥ 2 conv layers per block and M ≥ 1 cascades
(``d5c5`` teacher, ``d3c5`` student in the paper); ``dcunetM`` a DC-UNet of M cascades (Table 6's teacher);
``vdsrN`` a VDSR of N convs (super-resolution: vdsr12 teacher, vdsr4 student); ``rcnnL`` a residual CNN of
L convs in 5 blocks, the middle ones ResNet units (the feature-domain SFT ablation: rcnn25 teacher, rcnn15
student). :func:`build_model` turns a name plus :class:`ModelOptions` into a
:class:`~compressor.models.base.CascadeModel`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from compressor.errors import InputError
from compressor.models.base import Cascade, CascadeModel, ReconOutput
from compressor.models.dccnn import BLOCK_FORMS, DCCNN, CNNBlock
from compressor.models.dcunet import DCUNet
from compressor.models.feature_chain import RCNN_BLOCKS, FeatureChainModel, ResidualCNN
from compressor.models.features import FeatureRecorder
from compressor.models.vdsr import VDSR, VDSR_BLOCKS
from compressor.physics.fft import IMAGE_CHANNELS
from compressor.registry import Registry


@dataclass(frozen=True)
class ModelOptions:
    """Options recorded with every model (they change behaviour, not the parameter count of paper models).

    Attributes:
        block_form: ``plain`` (block output is the new image, the authors' code) or ``residual``
            (image + CNN(image), Schlemper et al.).
        block_padding: zero padding added around each block's input and cropped from its output (authors: 5).
        dc_lambda: ``None`` = λ → ∞ (paper); a float = finite DF weight.
        dc_learnable: learn λ (one extra parameter per cascade).
        width: hidden channels of every block (paper: 32); ``channels`` in the JSON form (:meth:`to_dict`), the key
            every ``stage.json``, stage key and exported file holds.
        image_channels: the image's channels: 1, the paper's real image; 2, the complex image as real and imaginary
            parts (DC-CNNs only; the other families stay real-valued).
    """

    block_form: str = "plain"
    block_padding: int = 5
    dc_lambda: float | None = None
    dc_learnable: bool = False
    width: int = 32
    image_channels: int = 1

    def __post_init__(self) -> None:
        if self.block_form not in BLOCK_FORMS:
            raise InputError(f"block_form must be one of {', '.join(BLOCK_FORMS)}, got {self.block_form!r}")
        if self.image_channels not in IMAGE_CHANNELS:
            raise InputError(f"image channels must be 1 (real) or 2 (complex), got {self.image_channels}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the field names in field order, except ``width``, written ``channels``."""
        return {_JSON_KEYS.get(name, name): value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | Path | None = None) -> ModelOptions:
        """The options of a JSON form (:meth:`to_dict`; ``source`` names its file in errors)."""
        names = {json_key: name for name, json_key in _JSON_KEYS.items()}
        known = {spec.name for spec in fields(cls)}
        values = {names.get(key, key): value for key, value in raw.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"model options: unknown key {unknown[0]!r}; known keys: "
                             f"{', '.join(_JSON_KEYS.get(name, name) for name in sorted(known))}", source)
        return cls(**values)


_JSON_KEYS = {"width": "channels"}
"""Fields whose JSON key is another name: ``width`` was ``channels`` when every committed run was written."""


@dataclass(frozen=True)
class ArchitectureFamily:
    """A family of architecture names: a regex, its human form, and a builder from the regex groups."""

    pattern: str
    form: str
    example: str
    build: Callable[[re.Match, ModelOptions], CascadeModel]
    check: Callable[[re.Match], str | None]
    complex_images: bool = False
    """Whether the family builds 2-channel (complex) models; the others stay real-valued."""


ARCHITECTURES: Registry[ArchitectureFamily] = Registry("architecture family")


def _check_dccnn(match: re.Match) -> str | None:
    n_layers, n_cascades = int(match["n"]), int(match["m"])
    if n_layers < 2:
        return "N must be >= 2 conv layers per block"
    if n_cascades < 1:
        return "M must be >= 1 cascade"
    return None


def _build_dccnn(match: re.Match, options: ModelOptions) -> CascadeModel:
    return DCCNN(int(match["n"]), int(match["m"]), width=options.width, block_form=options.block_form,
                 block_padding=options.block_padding, dc_lambda=options.dc_lambda, dc_learnable=options.dc_learnable,
                 image_channels=options.image_channels)


ARCHITECTURES.register("dccnn")(ArchitectureFamily(
    pattern=r"d(?P<n>\d+)c(?P<m>\d+)", form="dNcM (N >= 2 conv layers per block, M >= 1 cascades)",
    example="d5c5", build=_build_dccnn, check=_check_dccnn, complex_images=True,
))


def _check_dcunet(match: re.Match) -> str | None:
    return "M must be >= 1 cascade" if int(match["m"]) < 1 else None


def _build_dcunet(match: re.Match, options: ModelOptions) -> CascadeModel:
    return DCUNet(int(match["m"]), width=options.width, block_form=options.block_form,
                  block_padding=options.block_padding, dc_lambda=options.dc_lambda, dc_learnable=options.dc_learnable)


ARCHITECTURES.register("dcunet")(ArchitectureFamily(
    pattern=r"dcunet(?P<m>\d+)", form="dcunetM (M >= 1 cascades of a 2-level U-Net + DF)",
    example="dcunet5", build=_build_dcunet, check=_check_dcunet,
))


def _check_vdsr(match: re.Match) -> str | None:
    return f"N must be >= {VDSR_BLOCKS} conv layers (one per block)" if int(match["n"]) < VDSR_BLOCKS else None


def _build_vdsr(match: re.Match, options: ModelOptions) -> CascadeModel:
    # VDSR has its own width (64) and no DF or block padding: the options do not apply.
    return VDSR(int(match["n"]))


ARCHITECTURES.register("vdsr")(ArchitectureFamily(
    pattern=r"vdsr(?P<n>\d+)", form=f"vdsrN (N >= {VDSR_BLOCKS} conv layers, {VDSR_BLOCKS} blocks, no DF)",
    example="vdsr12", build=_build_vdsr, check=_check_vdsr,
))


def _check_rcnn(match: re.Match) -> str | None:
    return f"L must be >= {RCNN_BLOCKS} conv layers (one per block)" if int(match["l"]) < RCNN_BLOCKS else None


def _build_rcnn(match: re.Match, options: ModelOptions) -> CascadeModel:
    # No DF and no block padding in the feature-domain network: only ``width`` applies.
    return ResidualCNN(int(match["l"]), width=options.width)


ARCHITECTURES.register("rcnn")(ArchitectureFamily(
    pattern=r"rcnn(?P<l>\d+)", form=f"rcnnL (L >= {RCNN_BLOCKS} conv layers, {RCNN_BLOCKS} blocks, no DF)",
    example="rcnn25", build=_build_rcnn, check=_check_rcnn,
))


def _valid_forms() -> str:
    return "; ".join(f"{ARCHITECTURES.get(f).form}, e.g. {ARCHITECTURES.get(f).example}" for f in ARCHITECTURES)


def parse_architecture(name: str) -> tuple[ArchitectureFamily, re.Match]:
    """Find the family of an architecture name, or raise :class:`InputError` showing the valid forms."""
    for family_name in ARCHITECTURES:
        family = ARCHITECTURES.get(family_name)
        match = re.fullmatch(family.pattern, name.strip().lower())
        if match:
            problem = family.check(match)
            if problem:
                raise InputError(f"invalid architecture {name!r}: {problem}; valid form: {family.form}")
            return family, match
    raise InputError(f"invalid architecture {name!r}; valid forms: {_valid_forms()}")


def build_model(name: str, options: ModelOptions | None = None) -> CascadeModel:
    """Build the model named ``name`` (e.g. ``d3c5``) with ``options``; the model records both."""
    options = options or ModelOptions()
    family, match = parse_architecture(name)
    if options.image_channels != 1 and not family.complex_images:
        raise InputError(f"{name} takes real images only (1 image channel): the {family.form.split(' ')[0]} family "
                         "stays real-valued; 2 image channels (complex data) take DC-CNNs, dNcM")
    model = family.build(match, options)
    model.arch = name.strip().lower()
    model.options = options
    return model


def count_parameters(name: str, options: ModelOptions | None = None) -> int:
    return build_model(name, options).num_parameters()


__all__ = [
    "ARCHITECTURES",
    "DCCNN",
    "VDSR",
    "ArchitectureFamily",
    "CNNBlock",
    "Cascade",
    "CascadeModel",
    "DCUNet",
    "FeatureChainModel",
    "FeatureRecorder",
    "ModelOptions",
    "ReconOutput",
    "ResidualCNN",
    "build_model",
    "count_parameters",
    "parse_architecture",
]
