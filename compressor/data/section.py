"""The ``[data]`` section of a run's configuration, :class:`DataConfig`: where slices come from and how they are
undersampled. It lives with the data it describes, below :mod:`compressor.config` (which composes the sections and
loads them from TOML); every field is checked there against its annotation (:mod:`compressor.field_checks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from compressor.data.coil_simulation import CoilSimulation
from compressor.data.fastmri import FastMRIReader
from compressor.data.sources import MNI_SOURCE, data_source_names
from compressor.field_checks import Above, AtLeast, Between, Count, OneOf
from compressor.masks import MASKS
from compressor.physics.degradation import INTERPOLATIONS
from compressor.vocabulary import ImagePhase, Task

MIN_IMAGE_SIZE = 8
"""The smallest square image a run accepts: a generated mask needs lines outside its fully sampled centre band."""


@dataclass
class DataConfig:
    """Where slices come from and how they are undersampled.

    ``source``: ``mni`` (embedded MNI ICBM152 T1 template), ``project`` (this tool's HDF5 layout), ``fastmri``
    (single-coil HDF5), ``nifti`` (MRBrainS/ACDC volumes), ``authors`` (the SFT-KD-Recon repository's HDF5
    layout). For file sources, ``train``/``validation``/``test`` name a file or a folder of files.

    ``task``: ``reconstruction`` (undersampled k-space → image, the paper's main task) or ``sr`` (super-resolution,
    Appendix B: the input is the image degraded by k-space truncation for scale ``s`` and interpolated back with
    ``sr_interpolation``, see :mod:`compressor.physics.degradation`); for ``sr`` each ``acceleration`` is the
    integer scale ``s`` (Table 9's "4x") and no mask is used.

    ``image_size``: the side of the square images that are scored (losses and metrics). Images-only sources are
    centre-cropped/padded to it; sources with measured k-space keep the grid their phase-encode lines were measured on
    (k-space cannot be cropped along them), and losses and metrics take its ``image_size`` centre crop.

    ``phase``: ``synthetic`` multiplies the embedded MNI magnitude images by a smooth, seeded synthetic phase
    (:mod:`compressor.data.phase`); file sources carry their own phase (or none) and refuse it.

    ``coils`` (2-channel models, images-only sources): simulate a scan with that many receive coils per slice and
    read it as the server does (:mod:`compressor.data.coil_simulation`): Biot–Savart sensitivities on a ring of
    radius ``coil_ring_radius`` (half image sides), correlated noise (``noise_correlation``) at ``snr`` dB (default
    :class:`~compressor.data.coil_simulation.CoilSimulation`'s), a noise scan, ``readout_oversampling``; draws seeded
    by ``coil_seed`` (default 0), the volume and the slice. ``snr`` and ``coil_seed`` need ``coils``.
    """

    task: Annotated[str, OneOf.enum("task", Task)] = "reconstruction"
    sr_interpolation: Annotated[str, OneOf.fixed("SR interpolation", INTERPOLATIONS)] = "bicubic"
    source: Annotated[str, OneOf("data source", data_source_names, ignore_case=True)] = MNI_SOURCE
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    image_size: Annotated[int, AtLeast(MIN_IMAGE_SIZE)] = 240
    downsample: Count = 1
    # Reconstruction: the undersampling factor R (1 leaves nothing to reconstruct); sr: the integer scale s.
    acceleration: list[Annotated[float, Above(1)]] = field(default_factory=lambda: [4.0])
    mask_type: Annotated[str, OneOf("mask type", MASKS.names, ignore_case=True)] = "random"
    mask_seed: int = 0
    center_fraction: Annotated[float, Between(0, 1, strict=True)] | None = None
    mask_file: str | None = None
    mask_centred: bool = False
    max_train_slices: Count | None = None
    max_eval_slices: Count | None = None
    fastmri_target_key: Annotated[str, OneOf.fixed("fastMRI target key",
                                                   FastMRIReader.RECONSTRUCTION_KEYS)] = "reconstruction_esc"
    cache_dir: str | None = None
    phase: Annotated[str, OneOf.enum("phase", ImagePhase)] = "none"
    coils: Count | None = None
    snr: float | None = None
    coil_seed: int | None = None
    coil_ring_radius: Annotated[float, Above(0)] = CoilSimulation.ring_radius
    noise_correlation: Annotated[float, Between(0, 1)] = CoilSimulation.noise_correlation
    readout_oversampling: Count = CoilSimulation.oversampling

    def coil_simulation(self) -> CoilSimulation | None:
        """The coil simulation these fields describe (``None`` without ``coils``)."""
        if self.coils is None:
            return None
        return CoilSimulation(coils=self.coils, snr_db=CoilSimulation.snr_db if self.snr is None else self.snr,
                              seed=self.coil_seed or 0, ring_radius=self.coil_ring_radius,
                              noise_correlation=self.noise_correlation, oversampling=self.readout_oversampling)
