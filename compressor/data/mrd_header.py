"""The encoding of an ISMRMRD (MRD) XML header that the raw-data path reconstructs: one Cartesian 2-D encoding space
(:class:`EncodingGeometry`); every other header is refused with an :class:`~compressor.errors.InputError` naming its
source.

Headers are parsed by :func:`parse_header`: UTF-8 text without a document type declaration. An ISMRMRD header never
needs one, and refusing ``<!DOCTYPE`` / ``<!ENTITY`` before the XML parser sees them keeps external entities (XXE)
and entity expansion ("billion laughs") out of the parser altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ismrmrd

from compressor.errors import InputError, first_line

DTD_MARKERS = ("<!doctype", "<!entity")


def parse_header(xml_text: str | bytes, source: str | Path | None) -> ismrmrd.xsd.ismrmrdHeader:
    """The parsed ISMRMRD header of ``xml_text`` (UTF-8; a trailing NUL, as FIRE sends it, is dropped); text that is
    not UTF-8, declares a DTD or entities, or does not parse is an :class:`InputError` naming ``source``."""
    if isinstance(xml_text, bytes):
        try:
            xml_text = xml_text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"the ISMRMRD XML header is not UTF-8 text ({error.reason} at byte {error.start})",
                             source) from None
    xml_text = xml_text.rstrip("\0")
    lowered = xml_text.lower()
    if any(marker in lowered for marker in DTD_MARKERS):
        raise InputError("the ISMRMRD XML header declares a DTD or entities (<!DOCTYPE / <!ENTITY), which ISMRMRD "
                         "headers never need: refused unparsed", source)
    try:
        return ismrmrd.xsd.CreateFromDocument(xml_text)
    except Exception as error:  # xsdata and the XML parsers raise many unrelated types for malformed documents
        raise InputError(f"the ISMRMRD XML header cannot be parsed ({first_line(error)})", source) from None


@dataclass(frozen=True)
class EncodingGeometry:
    """The one Cartesian 2-D encoding space of an ISMRMRD header.

    Attributes:
        encoded_matrix: ``(x, y, z)`` encoded matrix: ``x`` the readout samples *with* oversampling, ``y`` the
            phase-encode lines, ``z`` 1 (2-D).
        recon_matrix: ``(x, y, z)`` reconstructed matrix (``x`` without readout oversampling).
        encoded_fov_mm, recon_fov_mm: ``(x, y, z)`` fields of view in millimetres.
        step1_minimum, step1_maximum, step1_center: ``encodingLimits.kspace_encoding_step_1`` (the acquired
            phase-encode counters and the counter of the k-space centre line).
        average_maximum: ``encodingLimits.average.maximum`` (0 when absent): the last average's index.
        trajectory: ``"cartesian"``.
    """

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    step1_minimum: int
    step1_maximum: int
    step1_center: int
    average_maximum: int
    trajectory: str

    @property
    def readout_oversampling(self) -> float:
        """Encoded over reconstructed readout samples (2.0 for the usual 2x oversampled readout)."""
        return self.encoded_matrix[0] / self.recon_matrix[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``: readout samples after oversampling removal, encoded phase-encode lines (kept whole)."""
        return self.recon_matrix[0], self.encoded_matrix[1]

    @property
    def image_fov_mm(self) -> tuple[float, float, float]:
        """Field of view of the ``(H, W)`` grid in mm as ISMRMRD ``(x readout, y phase, z slice)``: the readout's
        from the recon space (oversampling removed), the phase-encode's from the encoded space (kept whole)."""
        return self.recon_fov_mm[0], self.encoded_fov_mm[1], self.recon_fov_mm[2]

    @classmethod
    def from_xml(cls, xml_text: str | bytes, source: str | Path) -> EncodingGeometry:
        """Parse an ISMRMRD XML header (:func:`parse_header`); refuse (:class:`InputError` naming ``source``) what is
        not one 2-D Cartesian encoding space that this tool can reconstruct."""
        return cls.from_header(parse_header(xml_text, source), source)

    @classmethod
    def from_header(cls, header: ismrmrd.xsd.ismrmrdHeader, source: str | Path) -> EncodingGeometry:
        """The geometry of a parsed ISMRMRD header (as :class:`ismrmrd.ProtocolDeserializer` hands it over), with
        the refusals of :meth:`from_xml`."""
        if not header.encoding:
            raise InputError("the ISMRMRD XML header has no encoding", source)
        if len(header.encoding) > 1:
            raise InputError(f"the ISMRMRD XML header has {len(header.encoding)} encoding spaces; only scans with "
                             "one are supported", source)
        encoding = header.encoding[0]
        trajectory = getattr(encoding.trajectory, "value", str(encoding.trajectory))
        if trajectory != "cartesian":
            raise InputError(f"trajectory {trajectory!r} is not Cartesian; only Cartesian scans are supported", source)
        encoded, recon = encoding.encodedSpace, encoding.reconSpace
        limits = encoding.encodingLimits
        _require_elements(encoding, source)
        step2 = limits.kspace_encoding_step_2
        if encoded.matrixSize.z > 1 or (step2 is not None and step2.maximum > 0):
            raise InputError(f"3-D encoding (encoded matrix z = {encoded.matrixSize.z}"
                             f"{'' if step2 is None else f', kspace_encoding_step_2 up to {step2.maximum}'}); only "
                             "2-D scans are supported", source)
        step1 = limits.kspace_encoding_step_1
        if step1 is None:
            raise InputError("the encoding limits have no kspace_encoding_step_1", source)
        geometry = cls(
            encoded_matrix=(encoded.matrixSize.x, encoded.matrixSize.y, encoded.matrixSize.z),
            recon_matrix=(recon.matrixSize.x, recon.matrixSize.y, recon.matrixSize.z),
            encoded_fov_mm=(encoded.fieldOfView_mm.x, encoded.fieldOfView_mm.y, encoded.fieldOfView_mm.z),
            recon_fov_mm=(recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z),
            step1_minimum=step1.minimum, step1_maximum=step1.maximum, step1_center=step1.center,
            average_maximum=limits.average.maximum if limits.average is not None else 0,
            trajectory=trajectory)
        geometry._check(source)
        return geometry

    def _check(self, source: str | Path) -> None:
        """Refuse an empty matrix, or a recon readout longer than the encoded one (interpolation)."""
        encoded_x, encoded_y = self.encoded_matrix[:2]
        recon_x = self.recon_matrix[0]
        if min(encoded_x, encoded_y, recon_x) < 1:
            raise InputError(f"the encoded matrix {encoded_x}x{encoded_y} or recon readout {recon_x} is empty", source)
        if recon_x > encoded_x:
            raise InputError(f"the recon matrix readout ({recon_x}) is larger than the encoded one ({encoded_x}): "
                             "readout interpolation is not supported, only oversampling removal", source)


def _require_elements(encoding: ismrmrd.xsd.encodingType, source: str | Path) -> None:
    """Refuse an encoding without the elements the geometry is read from: xsdata's parser refuses a document without
    them, but header objects built in code (a deserializer's, :mod:`compressor.data.mrd_v2`'s) may hold ``None``."""
    required = {"encodingLimits": encoding.encodingLimits}
    for space_name in ("encodedSpace", "reconSpace"):
        space = getattr(encoding, space_name)
        required[space_name] = space
        if space is not None:
            required[f"{space_name}.matrixSize"] = space.matrixSize
            required[f"{space_name}.fieldOfView_mm"] = space.fieldOfView_mm
    missing = [name for name, element in required.items() if element is None]
    if missing:
        raise InputError(f"the ISMRMRD XML header's encoding has no {', '.join(missing)}", source)
