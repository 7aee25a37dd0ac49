"""Issue 27's measurement through the deployed path: simulated scans of unseen coils written as ISMRMRD raw files and
reconstructed by ``compress reconstruct --source ismrmrd`` with a run's exported ONNX model.

:mod:`benchmarks.multicoil_generalisation` scores a run's PyTorch models on the seeded scans of an evaluation
condition. This sends the same scans as a scanner would: per test slice one ISMRMRD raw file (each slice has its own
coils and noise covariance, so its own noise scan) holding the noise readouts and then the model's lines only, 2x
oversampled along the readout, written with the ``ismrmrd`` library. The CLI prewhitens, removes the oversampling,
forms the virtual coil and runs the ONNX model; its float magnitude (``--out``) and the 16-bit images it would serve
(``--ismrmrd-out``, pixels x ``RescaleSlope``) are scored as the generalisation benchmark scores: against the
noise-free virtual-coil target, scored region, data range = target slice max. Reported per output: PSNR, SSIM, the
gain over the virtual coil's zero-filled image, and the largest per-slice PSNR difference from the PyTorch model on
the dataset's path. Usage::

    python -m benchmarks.served_multicoil --run runs/quick-multicoil [--model sft_kd/at/d3c5@4x] \\
        [--condition 12-coils-close] [--out docs/results/quick-multicoil/served.json]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import click
import h5py
import ismrmrd
import numpy as np
import torch
from tabulate import tabulate

from benchmarks.multicoil_generalisation import CONDITIONS, condition_slices, magnitudes, reconstruct, scores
from compressor import rundir
from compressor.evaluate.stats import summarise
from compressor.export.run_models import load_run_models
from compressor.io import save_json
from tests.synthetic_scans import write_simulated_scan


def served_magnitudes(model: Path, raw: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(float magnitude, 16-bit image x RescaleSlope)`` ``(H, W)`` of ``compress reconstruct --source ismrmrd``."""
    out, images = folder / f"{raw.stem}.recon.h5", folder / f"{raw.stem}.images.h5"
    subprocess.run([sys.executable, "-m", "compressor", "reconstruct", str(model), str(raw), "--source", "ismrmrd",
                    "--out", str(out), "--ismrmrd-out", str(images), "--provider", "cpu"],
                   check=True, capture_output=True)
    with h5py.File(out) as file:
        magnitude = file["magnitude"][0]
    dataset = ismrmrd.Dataset(str(images), "dataset", create_if_needed=False)
    try:
        image = dataset.read_image("images_0", 0)
    finally:
        dataset.close()
    slope = float(ismrmrd.Meta.deserialize(image.attribute_string)["RescaleSlope"])
    pixels = image.data[0, 0].T  # ISMRMRD images are (channel, z, y, x) with x the readout: the tool's (H, W) is (x, y)
    return magnitude, (pixels.astype(np.float64) * slope).astype(np.float32)


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--model", "model_name", default="sft_kd/at/d3c5@4x", show_default=True,
              help="The model's results name; its ONNX file in the run's exports/ is reconstructed with.")
@click.option("--condition", type=click.Choice(sorted(CONDITIONS)), default="12-coils-close", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/served_multicoil.json"))
def main(run_dir: Path, model_name: str, condition: str, out: Path) -> None:
    torch_model = next((m for m in load_run_models(run_dir) if m.name == model_name), None)
    if torch_model is None:
        raise click.BadParameter(f"{run_dir} has no model {model_name!r}", param_hint="--model")
    model_path = rundir.RunLayout(run_dir).exports / torch_model.file_name
    if not model_path.is_file():
        raise click.BadParameter(f"{model_path} not found: export the run first (compress export)",
                                 param_hint="--model")
    _, dataset, size = condition_slices(run_dir, CONDITIONS[condition], "test")
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=8))
    target = magnitudes(batches, "target", size)
    zero_filled = scores(magnitudes(batches, "zero_filled", size), target)
    pytorch = scores(reconstruct(torch_model, batches, size), target)
    lines = dataset.mask.values.any(axis=0)
    served: dict[str, list[np.ndarray]] = {"float32": [], "magnitude16": []}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(len(dataset)):
            raw = Path(folder) / f"slice{index:02d}.h5"
            write_simulated_scan(raw, dataset.simulated_scan(index), lines)
            for name, image in zip(served, served_magnitudes(model_path, raw, Path(folder)), strict=True):
                served[name].append(image)
    record = {"run": str(run_dir), "model": model_name, "condition": condition,
              "simulation": CONDITIONS[condition].describe(), "slices": len(dataset),
              "zero_filled_psnr": summarise(zero_filled["psnr"]).mean, "outputs": {}}
    rows = []
    for name, values in [("PyTorch (dataset path)", pytorch)] + [
            (f"served {name}", scores(np.stack(images), target)) for name, images in served.items()]:
        entry = {"psnr": summarise(values["psnr"]).mean, "ssim": summarise(values["ssim"]).mean,
                 "gain_db": float(np.mean(values["psnr"] - zero_filled["psnr"])),
                 "max_psnr_difference_from_pytorch_db": float(np.max(np.abs(values["psnr"] - pytorch["psnr"])))}
        record["outputs"][name] = entry
        rows.append([name, f"{entry['psnr']:.2f}", f"{entry['ssim']:.4f}", f"{entry['gain_db']:+.2f}",
                     f"{entry['max_psnr_difference_from_pytorch_db']:.2g}"])
    text = (f"{model_name} of {run_dir}, {len(dataset)} test slices, {CONDITIONS[condition].describe()}; "
            f"virtual coil zero-filled {record['zero_filled_psnr']:.2f} dB\n\n"
            + tabulate(rows, headers=["output", "PSNR (dB)", "SSIM", "gain (dB)", "max |ΔPSNR| vs PyTorch (dB)"],
                       tablefmt="github"))
    click.echo(text)
    save_json(out, record)
    out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
