"""The one dataset abstraction: per slice, the zero-filled image, undersampled k-space, mask and target.

Every source goes through the same steps (see :mod:`compressor.physics.normalisation` for the
normalisation):

1. the reader gives the stored slice (:class:`~compressor.data.readers.SliceData`);
2. images-only sources (fastMRI reconstructions, NIfTI, the MNI template: real magnitude images) are
   centre-cropped/zero-padded to the image size and their k-space is **simulated**, ``y = M ⊙ F(x)``
   (uncentred, orthonormal); a source with fully sampled k-space is undersampled with the mask; a source
   with already undersampled k-space (the authors' files) is used as is;
3. :func:`~compressor.physics.normalisation.normalise_kspace` forms ``x_u = Re F^{-1}(y)`` and divides everything
   by ``max |x_u|``.

**Two image channels** (``image_channels=2``, the complex models): the readers are opened with ``keep_phase`` and
give the complex image and its k-space on the grid the phase-encode lines were measured on (fastMRI: 320 x 368 after
the readout oversampling is removed; the undersampling is retrospective, with the run's mask, on that grid);
images-only sources are centre-cropped/padded to ``image_size`` and, with ``phase="synthetic"``, multiplied by the
simulated phase of :mod:`compressor.data.phase`; with ``coils`` (:mod:`compressor.data.coil_simulation`) a multi-coil
scan of that image is simulated and read as the server reads it, and the virtual coil's undersampled k-space and
noise-free image replace k-space and target. Zero-filled image and target are then ``(2, H, W)`` (real, imag),
normalised by the largest magnitude of the zero-filled image, and losses and metrics score the ``image_size`` centre
of the grid (:func:`~compressor.data.transforms.scored_image`).

That function is the one normalisation of the tool: the exported graph (:mod:`compressor.export.graph.scanner_graph`)
calls it with
its own Fourier operator, so ``compress reconstruct`` and export validation normalise exactly as training does.

The super-resolution task (:class:`SuperResolutionDataset`) replaces steps 2-3: the input is the target degraded
by :func:`~compressor.physics.degradation.degrade`, normalised by its own maximum (again from the input alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from compressor.data.coil_simulation import (
    CoilSimulation,
    SimulatedAcquisition,
    SimulatedPair,
    read_pair,
    simulate_scan,
)
from compressor.data.coils import masked_virtual_coil, virtual_coil
from compressor.data.phase import with_synthetic_phase
from compressor.data.readers import SliceData, VolumeReader
from compressor.data.sample import Sample
from compressor.data.transforms import centre_crop_or_pad
from compressor.errors import InputError
from compressor.masks import SamplingMask
from compressor.physics import (
    NormalisedInput,
    apply_mask,
    fft2,
    normalisation_scale,
    normalise_kspace,
    pair_to_channels,
    undersample,
)
from compressor.physics.degradation import INTERPOLATIONS, check_scale, degrade
from compressor.vocabulary import ImagePhase

__all__ = ["NormalisedInput", "SliceDataset", "SuperResolutionDataset", "centre_crop_or_pad", "no_measurement_mask",
           "normalise_kspace"]


class StoredSlice(NamedTuple):
    """Item ``index`` of a dataset as stored: its volume, its index there, and the reader's data."""

    reader: VolumeReader
    slice_index: int
    data: SliceData


def _as_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


_SCANNED: set[tuple] = set()
"""Slices :meth:`SliceDataset.scan` found good in this process: ``(file, mtime, size, slice, shape, dataset)``."""


class SliceDataset(Dataset):
    """Slices of several volumes, undersampled with one fixed mask, normalised; items are :class:`Sample`.

    Args:
        readers: the volumes.
        mask: the sampling mask; its shape is the image shape of every item.
        image_size: centre crop/pad size for images-only sources (an int means square); ``None`` keeps the
            stored size. Sources with k-space are never cropped, so their stored size must equal the mask's.
        slices: ``(reader index, slice index)`` pairs to serve, in order; default every slice of every reader.
        image_channels: 1 (the paper's real images) or 2 (complex images; the readers must have been opened with
            ``keep_phase=True``); sources with k-space then keep their grid, which must be the mask's.
        phase: ``none`` or ``synthetic`` (:mod:`compressor.data.phase`; images-only sources, 2 channels only).
        coils: simulate a multi-coil scan of every images-only slice (after its phase) and read it as the server
            does (:mod:`compressor.data.coil_simulation`; 2 channels only): the item's k-space is the virtual coil's
            undersampled k-space and its target the noise-free virtual-coil image. Pairs are cached per item.
    """

    def __init__(self, readers: Sequence[VolumeReader], mask: SamplingMask,
                 image_size: int | tuple[int, int] | None = None,
                 slices: Sequence[tuple[int, int]] | None = None, image_channels: int = 1, phase: str = "none",
                 coils: CoilSimulation | None = None):
        if phase != "none" and image_channels != 2:
            raise InputError(f"a synthetic phase needs 2-channel (complex) models, got {image_channels} image channel")
        if coils is not None and image_channels != 2:
            raise InputError(f"simulated coils need 2-channel (complex) models, got {image_channels} image channel")
        self.readers = list(readers)
        self.mask = mask
        self.image_size = _as_size(image_size)
        self.image_channels = image_channels
        self.phase = phase
        self.coils = coils
        self._pairs: dict[int, SimulatedPair] = {}
        for reader in self.readers:
            shape = reader.image_shape if image_channels == 2 and reader.stores_kspace else (
                self.image_size or reader.image_shape)
            if shape != mask.shape:
                raise InputError(
                    f"mask ({mask.kind}, digest {mask.digest()}) has shape {mask.shape} but the images are {shape}; "
                    "set [data] image_size or use a mask of the image shape", reader.path)
        if slices is None:
            slices = [(r, s) for r, reader in enumerate(self.readers) for s in range(len(reader))]
        self.slices = [(int(r), int(s)) for r, s in slices]
        for r, s in self.slices:
            if not (0 <= r < len(self.readers) and 0 <= s < len(self.readers[r])):
                raise IndexError(f"slice ({r}, {s}) does not exist in the dataset's volumes")
        self._mask_tensor = torch.from_numpy(np.ascontiguousarray(mask.values, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.slices)

    def _stored(self, index: int) -> StoredSlice:
        """Read item ``index``; a slice without a target image is an input error (training and evaluation need
        one)."""
        reader_index, slice_index = self.slices[index]
        reader = self.readers[reader_index]
        data = reader.read_slice(slice_index)
        if data.target is None:
            raise InputError(f"slice {slice_index} has no target image (training and evaluation need one)", reader.path)
        return StoredSlice(reader, slice_index, data)

    def scanned_target(self, data: SliceData) -> np.ndarray:
        """The target an item of ``data`` is trained and scored on, unnormalised: stored k-space is never cropped,
        an images-only slice is centre-cropped/padded to the mask's shape."""
        return data.target if data.kspace is not None else centre_crop_or_pad(data.target, self.mask.shape)

    def coil_references(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(|virtual coil|, root-sum-of-squares)`` ``(S, H, W)`` float32 of the slices whose reader compressed coils
        or whose coils were simulated (the noise-free target and the RSS of its prewhitened coil images), each
        divided by the RSS image's maximum, for reporting what the coil compression costs; ``None`` when no slice is
        multi-coil."""
        pairs = []
        for index in range(len(self)):
            stored = self._stored(index)
            if self.coils is not None and stored.data.kspace is None:
                simulated = self._simulated(index, stored)
                virtual, rss = simulated.target, simulated.rss
            else:
                virtual, rss = stored.data.target, stored.data.rss
            if rss is not None:
                peak = float(np.max(rss)) or 1.0
                pairs.append((np.abs(virtual) / peak, rss / peak))
        if not pairs:
            return None
        return (np.stack([m for m, _ in pairs]).astype(np.float32), np.stack([r for _, r in pairs]).astype(np.float32))

    def scan(self) -> None:
        """Read every slice once before training, so bad data stops a run before its first stage.

        The readers refuse NaN or Inf (naming the file, key and slice); a target whose maximum is not positive
        (an all-zero slice) is refused here: it normalises to nothing to learn, and PSNR/SSIM take the target
        slice's maximum as data range. A slice already scanned in this process (same file, size and time) is
        not read again, so the pipeline's own :func:`~compressor.data.build_splits` after the CLI's check is cheap.
        """
        for index, (reader_index, slice_index) in enumerate(self.slices):
            reader = self.readers[reader_index]
            stat = reader.path.stat()
            key = (str(reader.path.resolve()), stat.st_mtime_ns, stat.st_size, slice_index, self.mask.shape,
                   type(self).__name__)
            if key in _SCANNED:
                continue
            target = self.scanned_target(self._stored(index).data)
            peak = float(np.max(np.abs(target) if np.iscomplexobj(target) else target))
            if not peak > 0:
                problem = "is all zero" if peak == 0 else f"has maximum {peak:g} <= 0"
                raise InputError(f"slice {slice_index}: the target image {problem}, so there is nothing to learn "
                                 "and no data range to score it (PSNR/SSIM use the slice's maximum); remove the "
                                 "slice from the file", reader.path)
            _SCANNED.add(key)

    def __getitem__(self, index: int) -> Sample:
        stored = self._stored(index)
        reader, slice_index, data = stored
        if self.image_channels == 2:
            return self._complex_sample(index, stored)
        if data.kspace is None:
            target = torch.from_numpy(centre_crop_or_pad(data.target, self.mask.shape))
            kspace = undersample(target, self._mask_tensor)
        else:
            target = torch.from_numpy(data.target)
            kspace = self._measured_kspace(reader, slice_index, data)
        normalised = normalise_kspace(kspace)
        return Sample(
            zero_filled=normalised.zero_filled[None],
            kspace=normalised.kspace[None],
            mask=self._mask_tensor[None],
            target=(target / normalised.scale)[None],
            scale=normalised.scale,
            volume=reader.name,
            slice_index=slice_index,
        )

    def _simulated(self, index: int, stored: StoredSlice) -> SimulatedPair:
        """The simulated multi-coil pair of images-only item ``index`` (computed once, then cached)."""
        if index not in self._pairs:
            self._pairs[index] = read_pair(self._scan(stored), self.mask.values)
        return self._pairs[index]

    def simulated_scan(self, index: int) -> SimulatedAcquisition:
        """The raw scan the coil simulation makes of images-only item ``index`` (``coils`` set): the readouts a
        scanner would send, from which the item's pair is read (:func:`~compressor.data.coil_simulation.read_pair`)."""
        if self.coils is None:
            raise ValueError("this dataset simulates no coils")
        return self._scan(self._stored(index))

    def _scan(self, stored: StoredSlice) -> SimulatedAcquisition:
        """The simulated scan of an images-only slice, seeded by its volume and index."""
        return simulate_scan(self._image(stored), self.coils, stored.reader.name, stored.slice_index)

    def _image(self, stored: StoredSlice) -> np.ndarray:
        """An images-only slice's image ``(H, W)`` cropped/padded to the mask's shape, with its synthetic phase if
        the dataset adds one."""
        image = centre_crop_or_pad(stored.data.target, self.mask.shape)
        if self.phase == ImagePhase.SYNTHETIC:
            image = with_synthetic_phase(image, stored.reader.name, stored.slice_index)
        return image

    def _complex_sample(self, index: int, stored: StoredSlice) -> Sample:
        """The 2-channel item: the complex target and its undersampled k-space, normalised (module docstring)."""
        reader, slice_index, data = stored
        if data.kspace is None and self.coils is not None:
            simulated = self._simulated(index, stored)
            target = torch.from_numpy(simulated.target)
            kspace = torch.view_as_real(torch.from_numpy(simulated.kspace))
        elif data.kspace is None:
            target = torch.from_numpy(np.ascontiguousarray(self._image(stored), dtype=np.complex64))
            kspace = apply_mask(fft2(torch.view_as_real(target)), self._mask_tensor)
        elif data.coil_kspace is not None:
            target, kspace = self._served_virtual_coil(reader, slice_index, data)
        else:
            target = torch.from_numpy(np.ascontiguousarray(data.target, dtype=np.complex64))
            kspace = self._measured_kspace(reader, slice_index, data)
        normalised = normalise_kspace(kspace[None], channels=2)
        scale = normalised.scale[0]
        return Sample(
            zero_filled=normalised.zero_filled,
            kspace=normalised.kspace,
            mask=self._mask_tensor[None],
            target=pair_to_channels(torch.view_as_real(target)[None], 2) / scale,
            scale=scale,
            volume=reader.name,
            slice_index=slice_index,
        )

    def _served_virtual_coil(self, reader: VolumeReader, slice_index: int, data: SliceData
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-coil k-space compressed as the server compresses it: the target ``(H, W)`` complex64 (the coil
        images combined with ``u``) and the virtual coil's undersampled k-space ``(H, W, 2)``, ``u`` from the masked
        coil k-space (:func:`~compressor.data.coils.masked_virtual_coil`)."""
        if data.coil_kspace.shape[1:] != self.mask.shape:
            raise InputError(f"k-space of slice {slice_index} has shape {data.coil_kspace.shape[1:]}, the mask "
                             f"{self.mask.shape}; k-space cannot be cropped, so set [data] image_size to the stored "
                             "size", reader.path)
        kspace, u = masked_virtual_coil(data.coil_kspace, self.mask.values)
        target = virtual_coil(np.fft.ifft2(data.coil_kspace, norm="ortho"), u)
        return torch.from_numpy(target), torch.view_as_real(torch.from_numpy(kspace))

    def _measured_kspace(self, reader: VolumeReader, slice_index: int, data: SliceData) -> torch.Tensor:
        """The undersampled k-space ``(H, W, 2)`` of a source that stores k-space, checked against the mask."""
        if data.kspace.shape != self.mask.shape:
            raise InputError(
                f"k-space of slice {slice_index} has shape {data.kspace.shape}, the mask {self.mask.shape}; k-space "
                "cannot be cropped, so set [data] image_size to the stored size", reader.path)
        measured = torch.view_as_real(torch.from_numpy(np.ascontiguousarray(data.kspace, dtype=np.complex64)))
        if not data.kspace_undersampled:
            return apply_mask(measured, self._mask_tensor)
        if np.any(data.kspace[self.mask.values == 0] != 0):
            raise InputError(
                f"undersampled k-space of slice {slice_index} has samples where the mask (digest "
                f"{self.mask.digest()}) has none: it was undersampled with another mask or convention", reader.path)
        return measured


def no_measurement_mask(shape: tuple[int, int], scale: int) -> SamplingMask:
    """The all-zero mask of the super-resolution task: nothing is measured on the high-resolution grid, so a DF
    layer (if a model has one) returns its input unchanged. ``acceleration`` records the SR scale."""
    return SamplingMask(np.zeros(shape, dtype=np.float32), kind="none (super-resolution)", acceleration=float(scale))


class SuperResolutionDataset(SliceDataset):
    """Slices for the super-resolution task (Appendix B); items are :class:`Sample` like reconstruction's.

    Per slice: the real target ``x`` (centre-cropped/padded to ``image_size`` for images-only sources),
    the input ``x_lr = degrade(x, scale, interpolation)`` (k-space truncation to the central ``1/scale`` band, then
    interpolation back to ``H × W``), ``scale_n = max |x_lr|``; ``zero_filled = x_lr / scale_n`` (the field keeps its
    name: it is the network input), ``target = x / scale_n``, and zero k-space and mask (nothing measured on the
    HR grid). The ``zero_filled`` row of the tables is therefore the interpolated input.

    Args:
        readers: the volumes (their stored targets are used; stored k-space is ignored).
        scale: the integer SR factor ``s``; it must divide both image dimensions.
        interpolation: ``bicubic`` (VDSR's) or ``sinc`` (zero-padded k-space).
        image_size: as for :class:`SliceDataset` (required for sources whose stored sizes differ).
        slices: ``(reader index, slice index)`` pairs, default all.
    """

    def __init__(self, readers: Sequence[VolumeReader], scale: int, interpolation: str,
                 image_size: int | tuple[int, int] | None = None,
                 slices: Sequence[tuple[int, int]] | None = None):
        if interpolation not in INTERPOLATIONS:
            raise InputError(f"unknown SR interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        shape = _as_size(image_size) or readers[0].image_shape
        check_scale(shape, scale)
        super().__init__(readers, no_measurement_mask(shape, scale), shape, slices)
        self.scale = scale
        self.interpolation = interpolation

    def scanned_target(self, data: SliceData) -> np.ndarray:
        return centre_crop_or_pad(data.target, self.mask.shape)

    def __getitem__(self, index: int) -> Sample:
        reader, slice_index, data = self._stored(index)
        target = torch.from_numpy(centre_crop_or_pad(data.target, self.mask.shape))
        low_resolution = degrade(target, self.scale, self.interpolation)
        scale = normalisation_scale(low_resolution)
        return Sample(
            zero_filled=(low_resolution / scale)[None],
            kspace=torch.zeros((1, *self.mask.shape, 2)),
            mask=self._mask_tensor[None],
            target=(target / scale)[None],
            scale=scale,
            volume=reader.name,
            slice_index=slice_index,
        )
