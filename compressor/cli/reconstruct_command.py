"""``compress reconstruct``: every slice of a k-space, image, ISMRMRD or MRD v2 input through an exported model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from compressor.cli.choices import PROVIDER_HELP, PROVIDERS, RECONSTRUCT_SOURCES, SHOW_DEFAULTS, given_options
from compressor.cli.common import OneLineCommand, UserError, handles_input_errors, require_writable
from compressor.cli.scanner_choices import IMAGE_FORMAT_HELP, IMAGE_FORMATS


@click.command("reconstruct", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Output HDF5: dataset 'reconstruction' (S, H, W) in the input's units, float32 (1-channel model) "
                   "or complex64 (2-channel model, with 'magnitude' float32). Required, except with --source mrd: "
                   "the output MRD v2 stream, standard output without --out.")
@click.option("--source", type=RECONSTRUCT_SOURCES,
              help="Input kind (default from the file name: .npy k-space, .nii/.nii.gz NIfTI, .h5 project HDF5, "
                   "or ismrmrd if it holds /dataset/xml and /dataset/data; ismrmrd: an ISMRMRD raw scan, Cartesian "
                   "2-D; mrd: an MRD v2 binary stream, INPUT '-' for "
                   "standard input, images out as an MRD v2 stream).")
@click.option("--ismrmrd-out", type=click.Path(path_type=Path, dir_okay=False),
              help="With --source ismrmrd: also write ISMRMRD images (images_0, --image-format), the ones compress "
                   "serve sends: headers carry the acquisitions' slice, position, orientation, field of view and "
                   "measurement_uid, and a MetaContainer the window, rescale slope and model.")
@click.option("--image-format", type=IMAGE_FORMATS, default="magnitude16", help=IMAGE_FORMAT_HELP)
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Mask .npy (H, W) or line pattern (W,) (default: the model's training mask).")
@click.option("--mask-centred/--mask-uncentred", default=False, help="Whether --mask has DC at (H//2, W//2).")
@click.option("--centred/--uncentred", default=False, help="Whether .npy k-space has DC at (H//2, W//2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Slices per ONNX Runtime call.")
@click.option("--previews", type=click.Path(path_type=Path, file_okay=False), help="Folder for one PNG per slice.")
@click.option("--take-real-part", is_flag=True, default=False,
              help="1-channel models: reconstruct k-space of a complex-valued image anyway (its real part, as the "
                   "paper does). 2-channel models reconstruct the complex image.")
@click.option("--provider", type=PROVIDERS, default="auto", help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads (default: all cores).")
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
@handles_input_errors
def reconstruct_command(model_path: Path, input_path: Path, out: Path, source: str | None, ismrmrd_out: Path | None,
                        image_format: str, mask_path: Path | None, mask_centred: bool, centred: bool, batch_size: int,
                        previews: Path | None, take_real_part: bool, provider: str, threads: int | None,
                        progress: bool) -> None:
    """Reconstruct every slice of INPUT with an exported model (scanner side: ONNX Runtime only).

    INPUT: undersampled k-space (.npy, complex (S, H, W) or (H, W); multi-coil (S, coils, H, W) with a 2-channel
    model), or a project/fastMRI/authors HDF5 or NIfTI volume (stored k-space is masked, images have their
    measurement simulated with the mask), or an ISMRMRD raw scan (--source ismrmrd), or an MRD v2 stream
    (--source mrd: a stdin-to-stdout filter with INPUT '-' and no --out). Example: compress reconstruct
    d3c5.onnx scan.npy --out scan.h5
    """
    from compressor.export.scanner.input_formats import input_format

    if source is not None and input_format(source).streamed:
        not_for_streams = [option for option, value in {"--ismrmrd-out": ismrmrd_out, "--mask": mask_path,
                                                        "--previews": previews}.items() if value is not None]
        # options with defaults: refused only when given explicitly
        not_for_streams += given_options(("centred", "mask_centred", "batch_size", "progress"))
        _reconstruct_mrd_stream(model_path, input_path, out, take_real_part, provider, threads, not_for_streams,
                                image_format)
        return
    if out is None:
        raise UserError("--out is required (only --source mrd writes its images to standard output without it)")
    if str(input_path) == "-":
        raise UserError("INPUT '-' (standard input) is for MRD v2 streams only: add --source mrd")
    if ismrmrd_out is None and given_options(("image_format",)):
        raise UserError("--image-format is for the images of --ismrmrd-out and --source mrd; the HDF5 output keeps "
                        "the reconstruction as it is")
    from compressor.export.scanner.reconstruct import reconstruct_file

    for path in (out, previews, ismrmrd_out):
        if path is not None:
            require_writable(path)
    result = reconstruct_file(model_path, input_path, out, source=source, mask_path=mask_path,
                              mask_centred=mask_centred, kspace_centred=centred, batch_size=batch_size,
                              previews=previews, take_real_part=take_real_part, provider=provider, threads=threads,
                              progress=progress, ismrmrd_out=ismrmrd_out, image_format_name=image_format)
    click.echo(f"{result.path}: {result.slices} slices reconstructed with {result.provider} in "
               f"{result.seconds:.1f} s" + (f"; {len(result.previews)} previews in {previews}" if previews else "")
               + (f"; ISMRMRD images in {result.ismrmrd_images}" if result.ismrmrd_images else ""))
    for note in result.notes:
        click.echo(f"note: {note}")


def _reconstruct_mrd_stream(model_path: Path, input_path: Path, out: Path | None, take_real_part: bool, provider: str,
                            threads: int | None, not_for_streams: Sequence[str], image_format: str) -> None:
    """``reconstruct --source mrd``: an MRD v2 stream (a file, or standard input for ``-``) to an MRD v2 stream of
    images (``--out``, or standard output); the summary goes to standard error, which a filter's output is not.
    ``not_for_streams``: the options given that a stream does not use (refused)."""
    if not_for_streams:
        raise UserError(f"{', '.join(not_for_streams)} cannot be used with --source mrd (the stream is reconstructed "
                        "slice by slice as it arrives, into MRD v2 images on the model's training mask)")
    if out is not None:
        require_writable(out)
    import sys

    from compressor.export.scanner.mrd_stream import reconstruct_mrd

    result = reconstruct_mrd(model_path, input_path, out, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                             take_real_part=take_real_part, provider=provider, threads=threads,
                             image_format_name=image_format)
    click.echo(f"{out or 'standard output'}: {result.images} MRD v2 images in {result.seconds:.1f} s"
               + (f"; not image data: {result.set_aside}" if result.set_aside else ""), err=True)


