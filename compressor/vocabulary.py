"""The closed vocabularies every layer shares: the choices of a run's configuration that data, models, KD losses and
the configuration itself all name. This module imports nothing of the project, so any module may import it.

Each is a :class:`~enum.StrEnum`: its members compare equal to their values, which are what configs, ``config.json``
and the CLI spell; :func:`values` lists them in declaration order.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class Task(StrEnum):
    """``data.task``: ``reconstruction`` (undersampled k-space → image) or ``sr`` (super-resolution)."""

    RECONSTRUCTION = "reconstruction"
    SR = "sr"


class ImagePhase(StrEnum):
    """``data.phase``: the embedded magnitude data as they are (``none``) or multiplied by a smooth, seeded,
    slice-varying synthetic phase (``synthetic``, a simulation that lets the complex path run offline)."""

    NONE = "none"
    SYNTHETIC = "synthetic"


class BlockForm(StrEnum):
    """``model.block_form``: a block's output is the new image (``plain``) or image + CNN(image) (``residual``)."""

    PLAIN = "plain"
    RESIDUAL = "residual"


class KDSchedule(StrEnum):
    """``kd.schedule``: the paper's Algorithm 1 (``joint``) or the authors' scripts (``two-phase``)."""

    JOINT = "joint"
    TWO_PHASE = "two-phase"


class KDMode(StrEnum):
    """``kd.mode``: each KD method as its own paper defines it (``paper``) or the authors' variant (``authors``)."""

    PAPER = "paper"
    AUTHORS = "authors"


def values(enumeration: type[Enum]) -> tuple[str, ...]:
    """The string values of a choice enumeration, in declaration order (for ``click.Choice`` and messages)."""
    return tuple(member.value for member in enumeration)
