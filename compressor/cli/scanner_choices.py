"""Option choices and help shared by the scanner commands (``compress serve``, ``compress reconstruct``), read from
the served-image registry when click needs them (building the CLI imports neither numpy's users nor ONNX Runtime)."""

from __future__ import annotations

from compressor.cli.choices import RegistryChoice

IMAGE_FORMAT_HELP = ("How images are written: magnitude16 (int16 magnitude scaled to 2^BitsStored-1 from the header's "
                     "userParameterLong, default 12; uint16 when 16; with RescaleSlope so pixel x slope is the "
                     "reconstruction's units; what scanners and PACS store), float32 or complex (research).")


def _image_formats() -> list[str]:
    from compressor.export.scanner.image_formats import IMAGE_FORMATS

    return IMAGE_FORMATS.names()


IMAGE_FORMATS = RegistryChoice(_image_formats)
