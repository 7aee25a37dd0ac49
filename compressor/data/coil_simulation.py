r"""Simulated multi-coil acquisitions for training: what a scanner sends, read the way the server reads it.

The 2-channel models meet multi-coil data at the scanner as **one virtual coil of prewhitened coils**
(``compress reconstruct --source ismrmrd``, ``compress serve``). This module simulates such scans from any complex
(or magnitude) slice ``x`` ``(H, W)`` on the tool's grid (axis 0 the readout, axis 1 the phase-encode lines) and
sends them through that same code, so that a model trains on what it will be given. Every draw is seeded by the
volume name, the slice index and :attr:`CoilSimulation.seed`: the same slice gets the same coils and noise in every
run and process, neighbouring slices different ones.

1. **Sensitivities** (:func:`coil_sensitivities`): ``C`` long straight conductors parallel to the slice normal on a
   ring of radius ``R`` about the image centre, in coordinates ``u, v ∈ [-1, 1]`` across the rows and columns. By
   Biot–Savart a line current's field at displacement ``d = (d_u, d_v)`` from its wire is ``∝ ẑ × d / |d|^2``; its
   complex transverse form ``B_u + i B_v = i (d_u + i d_v) / |d|^2`` (magnitude ``1/r``, the phase the azimuth about
   the wire) is the receive sensitivity (reciprocity), times a receive-chain phase ``φ_c ~ U[0, 2π)``. Placement per
   slice: conductor ``c`` at angle ``α_0 + 2π c / C + δ_c`` (ring rotation ``α_0 ~ U[0, 2π)``, jitter
   ``δ_c ~ U[-π/(2C), π/(2C)]``), ``R = ring_radius × U[0.9, 1.1]``. The maps are divided by their
   root-sum-of-squares, so **RSS = 1** at every pixel and the RSS of the coil images is ``|x|``.
2. **Noise** (:func:`noise_covariance`): complex Gaussian, correlated between coils with covariance
   ``Ψ = B B^H`` (``B = I + κ G / √C``, ``G`` standard complex Gaussian, ``κ = noise_correlation``), scaled so that its
   mean diagonal is ``σ^2``. ``σ`` is set by the **SNR**: ``σ = mean(|x| over the object) / 10^(SNR / 20)``, the
   object being the pixels above 10 % of the slice's maximum; with the orthonormal FFT ``σ`` is the noise standard
   deviation per coil of a k-space sample and of an image pixel alike, so the SNR is that of an RSS image.
3. **Acquisition** (:func:`simulate_acquisition`): the coil images ``s_c x`` zero-padded along the readout to
   ``H × oversampling`` rows (centred), their centred orthonormal 2-D FFT (the scanner's k-space, DC at ``N // 2``)
   plus noise: every phase-encode line once, as :class:`~compressor.data.mrd_readout.Readout` s, after a noise scan of
   :data:`NOISE_READOUTS` readouts of noise alone (``ACQ_IS_NOISE_MEASUREMENT``), one dwell time for both.
4. **Reading** (:func:`read_pair`), the server's code: :class:`~compressor.data.mrd_raw.SliceAssembler` (noise
   prewhitening from the noise scan, oversampling removal, the tool's uncentred k-space), then the model's mask and
   the SVD virtual coil of the masked k-space (:func:`~compressor.data.coils.masked_virtual_coil`, as
   :func:`~compressor.export.scanner.raw_input.prepare_slice`). The **target** is the same acquisition without noise
   through the same assembler (the same noise scan, hence the same prewhitening), fully sampled and combined with
   the **same** ``u``: the noise-free virtual-coil image the noisy input stands for.

The model's k-space is therefore in the prewhitened units of the server (noise standard deviation 1 per coil); the
dataset normalises it as it normalises every input.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import ismrmrd
import numpy as np

from compressor.data import coils
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import SliceAssembler
from compressor.data.mrd_readout import AcquisitionInfo, Readout, SliceKey

NOISE_READOUTS = 64
"""Readouts of the noise scan: ``64 × H × oversampling`` samples per coil estimate the noise covariance."""
DWELL_TIME_US = 5.0
OBJECT_THRESHOLD = 0.1
"""Pixels above this fraction of the slice's maximum magnitude are the object the SNR is stated for."""
RADIUS_SPREAD = (0.9, 1.1)
"""The per-slice factor of the ring radius."""
_SALT = 0x5EED_C011  # keeps these draws apart from the synthetic phase's, which are seeded by the same slice
_INFO = AcquisitionInfo((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), 0, 0,
                        (0, 0, 0))


@dataclass(frozen=True)
class CoilSimulation:
    """How scans are simulated (module docstring).

    Attributes:
        coils: receive coils ``C``.
        snr_db: the SNR in dB (module docstring, step 2).
        seed: mixed into every slice's draws: another seed, other coil placements, phases and noise.
        ring_radius: the conductors' mean distance from the image centre, in half image sides (above √2 the ring
            clears the image's corners).
        noise_correlation: ``κ``, the strength of the coils' noise correlation (0: independent, equal noise).
        oversampling: integer readout oversampling (1: none).
    """

    coils: int = 8
    snr_db: float = 20.0
    seed: int = 0
    ring_radius: float = 1.6
    noise_correlation: float = 0.3
    oversampling: int = 2

    def describe(self) -> str:
        """One line for logs and tables, e.g. ``"simulated coils: 8 (Biot–Savart wires, ring 1.6, seed 0), SNR
        20 dB, ..."``."""
        return (f"simulated coils: {self.coils} (Biot–Savart wires, ring {self.ring_radius:g}, seed {self.seed}), "
                f"SNR {self.snr_db:g} dB, noise correlation {self.noise_correlation:g}, readout oversampling "
                f"{self.oversampling}x; prewhitened, SVD virtual coil (a simulation)")


@dataclass(frozen=True)
class SimulatedAcquisition:
    """One simulated slice as a scanner sends it, and what it was made of.

    Attributes:
        geometry: the encoding (encoded readout ``H × oversampling``, image grid ``(H, W)``).
        noise_scan: the noise readouts, sent first.
        noisy: the image readouts, one per phase-encode line, with noise.
        clean: the same readouts without noise.
        sensitivities: ``(C, H, W)`` complex128, RSS 1.
        covariance: ``(C, C)`` complex128 Hermitian positive definite: the noise covariance ``Ψ`` drawn from.
    """

    geometry: EncodingGeometry
    noise_scan: tuple[Readout, ...]
    noisy: tuple[Readout, ...]
    clean: tuple[Readout, ...]
    sensitivities: np.ndarray
    covariance: np.ndarray


@dataclass(frozen=True)
class SimulatedPair:
    """A training pair read from a :class:`SimulatedAcquisition` (module docstring, step 4).

    Attributes:
        kspace: ``(H, W)`` complex64, uncentred, zero outside the mask: the virtual coil's undersampled k-space (the
            zero-filled input's), prewhitened units.
        target: ``(H, W)`` complex64: the noise-free, fully sampled virtual-coil image, combined with ``u``.
        rss: ``(H, W)`` float32: the root-sum-of-squares of the noise-free prewhitened coil images (the reference
            the coil compression is scored against).
        u: ``(C,)`` complex128: the compression vector, from the noisy masked k-space.
    """

    kspace: np.ndarray
    target: np.ndarray
    rss: np.ndarray
    u: np.ndarray


def slice_rng(volume: str, slice_index: int, seed: int) -> np.random.Generator:
    """The generator of one slice's draws, deterministic in ``(volume, slice_index, seed)``."""
    return np.random.default_rng([zlib.crc32(volume.encode()), int(slice_index), int(seed) & 0xFFFFFFFF, _SALT])


def coil_sensitivities(shape: tuple[int, int], settings: CoilSimulation, rng: np.random.Generator) -> np.ndarray:
    """``(C, H, W)`` complex128 Biot–Savart sensitivities of one slice, divided by their RSS (module docstring,
    step 1)."""
    count = settings.coils
    angles = rng.uniform(0.0, 2.0 * math.pi) + 2.0 * math.pi * np.arange(count) / count
    angles = angles + rng.uniform(-0.5, 0.5, count) * math.pi / count
    radius = settings.ring_radius * rng.uniform(*RADIUS_SPREAD)
    receive_phase = np.exp(1j * rng.uniform(0.0, 2.0 * math.pi, count))
    u = np.linspace(-1.0, 1.0, shape[0])[None, :, None] - radius * np.cos(angles)[:, None, None]
    v = np.linspace(-1.0, 1.0, shape[1])[None, None, :] - radius * np.sin(angles)[:, None, None]
    spacing = 2.0 / max(shape)  # a conductor inside the image would be singular at its pixel: at least a pixel away
    distance_squared = np.maximum(u ** 2 + v ** 2, spacing ** 2)
    fields = 1j * (u + 1j * v) / distance_squared * receive_phase[:, None, None]
    return fields / np.sqrt(np.sum(np.abs(fields) ** 2, axis=0))


def noise_sigma(image: np.ndarray, snr_db: float) -> float:
    """``σ`` for ``image`` ``(H, W)`` at ``snr_db`` (module docstring, step 2); for an all-zero image the level is
    taken as 1."""
    magnitude = np.abs(image)
    peak = float(magnitude.max())
    level = float(magnitude[magnitude > OBJECT_THRESHOLD * peak].mean()) if peak > 0 else 1.0
    return level / 10.0 ** (snr_db / 20.0)


def noise_covariance(coil_count: int, sigma: float, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """``Ψ`` ``(C, C)`` complex128, Hermitian positive definite, mean diagonal ``sigma^2`` (module docstring)."""
    mixing = (rng.standard_normal((coil_count, coil_count)) + 1j * rng.standard_normal((coil_count, coil_count)))
    mixing = np.eye(coil_count) + correlation * mixing / math.sqrt(2.0 * coil_count)
    covariance = mixing @ mixing.conj().T
    return covariance * (sigma ** 2 * coil_count / np.trace(covariance).real)


def complex_noise(covariance: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``(C, samples)`` complex128 Gaussian noise of covariance ``covariance`` ``(C, C)``: ``L w``, ``Ψ = L L^H``,
    ``w`` white with unit variance per complex sample."""
    lower = np.linalg.cholesky(covariance)
    white = rng.standard_normal((len(lower), samples)) + 1j * rng.standard_normal((len(lower), samples))
    return lower @ (white / math.sqrt(2.0))


def scanner_kspace(coil_images: np.ndarray, oversampling: int) -> np.ndarray:
    """``(C, H, W)`` coil images -> ``(C, H × oversampling, W)`` **centred** orthonormal k-space of the images
    zero-padded along the readout (image row ``r`` at ``(H × oversampling) // 2 - H // 2 + r``): the scanner's."""
    count, height, width = coil_images.shape
    padded = np.zeros((count, height * oversampling, width), np.complex128)
    start = (height * oversampling) // 2 - height // 2
    padded[:, start:start + height] = coil_images
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def encoding(shape: tuple[int, int], oversampling: int) -> EncodingGeometry:
    """The encoding of a simulated scan: every one of the ``W`` lines, DC line counter ``W // 2``."""
    height, width = shape
    return EncodingGeometry(encoded_matrix=(height * oversampling, width, 1), recon_matrix=(height, width, 1),
                            encoded_fov_mm=(float(height * oversampling), float(width), 1.0),
                            recon_fov_mm=(float(height), float(width), 1.0), step1_minimum=0,
                            step1_maximum=width - 1, step1_center=width // 2, average_maximum=0, trajectory="cartesian")


def _readouts(centred: np.ndarray) -> tuple[Readout, ...]:
    """One image readout per centred column ``w`` of ``(C, Nx, W)`` k-space (counter ``w``), the last flagged
    ``ACQ_LAST_IN_SLICE``."""
    width, samples = centred.shape[2], centred.shape[1]
    last = 1 << (ismrmrd.ACQ_LAST_IN_SLICE - 1)
    return tuple(Readout(np.ascontiguousarray(centred[:, :, column], np.complex64), last if column == width - 1 else 0,
                         column, SliceKey(0, 0, 0, 0, 0), 0, samples // 2, 0, 0, DWELL_TIME_US, _INFO)
                 for column in range(width))


def simulate_acquisition(image: np.ndarray, settings: CoilSimulation, rng: np.random.Generator
                         ) -> SimulatedAcquisition:
    """The scan a scanner would send of ``image`` ``(H, W)`` (complex, or real taken as is), module docstring."""
    image = np.asarray(image)
    sensitivities = coil_sensitivities(image.shape, settings, rng)
    covariance = noise_covariance(settings.coils, noise_sigma(image, settings.snr_db), settings.noise_correlation,
                                  rng)
    clean = scanner_kspace(sensitivities * image, settings.oversampling)
    count, samples, width = clean.shape
    noise = complex_noise(covariance, samples * width, rng).reshape(count, samples, width)
    flag = 1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)
    noise_scan = tuple(Readout(np.ascontiguousarray(scan, np.complex64), flag, 0, SliceKey(0, 0, 0, 0, 0), 0,
                               samples // 2, 0, 0, DWELL_TIME_US, _INFO)
                       for scan in np.split(complex_noise(covariance, NOISE_READOUTS * samples, rng),
                                            NOISE_READOUTS, axis=1))
    return SimulatedAcquisition(encoding(image.shape, settings.oversampling), noise_scan, _readouts(clean + noise),
                                _readouts(clean), sensitivities, covariance)


def assemble(geometry: EncodingGeometry, readouts: tuple[Readout, ...]) -> np.ndarray:
    """``(C, H, W)`` complex64 uncentred k-space of one slice's readouts (noise scan first) through the server's
    :class:`~compressor.data.mrd_raw.SliceAssembler`: prewhitened, oversampling removed."""
    assembler = SliceAssembler(geometry, "simulated scan")
    slices = [item for readout in readouts for item in assembler.add(readout)] + assembler.finish()
    return slices[0].kspace


def read_pair(acquisition: SimulatedAcquisition, mask: np.ndarray) -> SimulatedPair:
    """The training pair of ``acquisition`` under ``mask`` ``(H, W)`` 0/1 uncentred (module docstring, step 4)."""
    noisy = assemble(acquisition.geometry, acquisition.noise_scan + acquisition.noisy)
    kspace, u = coils.masked_virtual_coil(noisy, mask)
    clean_images = np.fft.ifft2(assemble(acquisition.geometry, acquisition.noise_scan + acquisition.clean),
                                norm="ortho")
    return SimulatedPair(kspace, coils.virtual_coil(clean_images, u), coils.root_sum_of_squares(clean_images), u)


def simulate_scan(image: np.ndarray, settings: CoilSimulation, volume: str, slice_index: int) -> SimulatedAcquisition:
    """The scan of slice ``slice_index`` of ``volume`` (its image ``(H, W)``), seeded by both and ``settings.seed``:
    the same slice gets the same coils and noise in training, evaluation and a raw file written of it."""
    return simulate_acquisition(image, settings, slice_rng(volume, slice_index, settings.seed))


def simulate_pair(image: np.ndarray, mask: np.ndarray, settings: CoilSimulation, volume: str,
                  slice_index: int) -> SimulatedPair:
    """The training pair of slice ``slice_index`` of ``volume`` (:func:`simulate_scan`), read as the server reads
    it."""
    return read_pair(simulate_scan(image, settings, volume, slice_index), mask)
