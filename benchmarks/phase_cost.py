"""What ignoring the phase costs: the paper's real-valued model against a 2-channel one on the same phased slices.

Both models reconstruct the validation slices of the complex run (``--complex-run``, e.g. ``compress --preset
quick-complex``: phase-carrying k-space). The 1-channel model is "given the real part", the paper's pipeline: its
zero-filled input is ``Re F⁻¹(y)`` normalised by its own max and every DF layer keeps the real part (what ``compress
reconstruct --take-real-part`` does); the 2-channel model takes the complex image. Both outputs are brought back to the
input's units and scored as magnitudes against ``|target|`` on the scored region, as every table of the tool is, with
a paired Wilcoxon test per slice. ``|Re x|`` of the target itself, scored the same way, is the ceiling of any
real-valued output: what a 1-channel model loses there it loses whatever it was trained on. Writes
``benchmarks/results/phase_cost.{json,md}``. Usage::

    python -m benchmarks.phase_cost --real-run runs/default --complex-run runs/quick-complex

``--real-run`` is a run with the 1-channel models (the default ``compress`` run); ``--roles`` picks the stages compared
(default the student and SFT-KD students, matched by role and architecture).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from tabulate import tabulate

from compressor import rundir
from compressor.data import build_splits
from compressor.data.transforms import scored_image
from compressor.errors import InputError
from compressor.evaluate.metrics import slice_metrics
from compressor.evaluate.stats import summarise, wilcoxon_test
from compressor.export.run_models import RunModel, load_run_models
from compressor.export.runtimes.cpu import cpu_features
from compressor.io import save_json
from compressor.physics import normalise_kspace

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_description() -> str:
    """The CPU's model name, its vector instruction sets (:func:`compressor.export.runtimes.cpu.cpu_features`) and
    threads."""
    return f"{cpu_features().describe()}, {torch.get_num_threads()} threads"


@torch.no_grad()
def magnitudes(model: RunModel, batches: list, channels: int, size: tuple[int, int]) -> np.ndarray:
    """``|x̂|`` of ``model`` on ``batches`` in the input's units, scored region ``(S, H', W')``. The batches carry the
    2-channel normalisation; a 1-channel model gets the same measured k-space normalised its own way (real part)."""
    images = []
    for batch in batches:
        measured = batch.kspace * batch.scale[:, None, None, None, None]
        if channels == 1:
            zero_filled, kspace, scale = normalise_kspace(measured, channels=1)
        else:
            zero_filled, kspace, scale = batch.zero_filled, batch.kspace, batch.scale[:, None]
        output = model.model(zero_filled, kspace, batch.mask) * scale[:, :, None, None]
        images.append(scored_image(output.abs() if channels == 1 else output, size).numpy())
    return np.concatenate(images)


def pick(models: list[RunModel], role: str, arch: str | None, run: Path) -> RunModel:
    for model in models:
        if model.role == role and (arch is None or model.stage.arch == arch):
            return model
    raise InputError(f"no {role} {arch or ''} stage in this run", run)


@click.command()
@click.option("--real-run", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Run directory with the paper's 1-channel models.")
@click.option("--complex-run", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Run directory with 2-channel models on phased data (e.g. --preset quick-complex).")
@click.option("--roles", default="student,sft_kd", help="Stage roles compared, comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "phase_cost.json")
def main(real_run: Path, complex_run: Path, roles: str, out: Path) -> None:
    config = rundir.read_config(complex_run)
    if config.model.image_channels != 2:
        raise click.UsageError(f"{complex_run} trained 1-channel models; pass a 2-channel run (--channels 2)")
    acceleration = config.data.acceleration[0]
    splits = build_splits(config.data, acceleration, log=lambda _: None, image_channels=2)
    batches = list(torch.utils.data.DataLoader(splits.validation, batch_size=8))
    size = (config.data.image_size, config.data.image_size)
    target = np.concatenate([scored_image(b.target * b.scale[:, None, None, None], size).numpy() for b in batches])
    # The best any real-valued output can do: the target's own real part, scored as a magnitude.
    real_part = np.concatenate([scored_image((b.target[:, :1] * b.scale[:, None, None, None]).abs(), size).numpy()
                                for b in batches])
    ceiling = slice_metrics(real_part, target, ("psnr", "ssim"))
    real_models, complex_models = load_run_models(real_run), load_run_models(complex_run)
    rows, record = [], {"cpu": cpu_description(), "torch": torch.__version__, "real_run": str(real_run),
                        "complex_run": str(complex_run), "acceleration": acceleration, "slices": len(target),
                        "real_part_of_target": {name: summarise(ceiling[name]).mean for name in ceiling},
                        "models": []}
    for role in roles.split(","):
        complex_model = pick(complex_models, role, None, complex_run)
        real_model = pick(real_models, role, complex_model.stage.arch, real_run)
        if real_model.mask.digest() != complex_model.mask.digest():
            raise click.UsageError(f"the two runs' {role} models were trained with different masks")
        scores = {channels: slice_metrics(magnitudes(model, batches, channels, size), target, ("psnr", "ssim"))
                  for channels, model in ((1, real_model), (2, complex_model))}
        test = wilcoxon_test(scores[1]["psnr"], scores[2]["psnr"])
        entry = {"role": role, "arch": complex_model.stage.arch,
                 **{f"{name}_{channels}ch": summarise(scores[channels][name]).mean
                    for channels in (1, 2) for name in ("psnr", "ssim")},
                 "psnr_gain_db": float(np.mean(scores[2]["psnr"] - scores[1]["psnr"])), "p_value": test.p_value}
        record["models"].append(entry)
        rows.append([f"{role} {entry['arch']}", f"{entry['psnr_1ch']:.2f}", f"{entry['psnr_2ch']:.2f}",
                     f"{entry['psnr_gain_db']:+.2f}", f"{test.p_value:.1e}", f"{entry['ssim_1ch']:.4f}",
                     f"{entry['ssim_2ch']:.4f}"])
    table = tabulate(rows, headers=["model", "PSNR real part (1 ch)", "PSNR complex (2 ch)", "gain dB", "p",
                                    "SSIM 1 ch", "SSIM 2 ch"], tablefmt="github")
    footer = (f"{len(target)} phased validation slices at {acceleration:g}x ({complex_run} against {real_run}); "
              f"|Re x| of the target itself scores {record['real_part_of_target']['psnr']:.2f} dB / "
              f"{record['real_part_of_target']['ssim']:.4f}, the ceiling of any real-valued output; {record['cpu']}")
    click.echo(f"{table}\n\n{footer}")
    save_json(out, record)
    out.with_suffix(".md").write_text(f"{table}\n\n{footer}\n")


if __name__ == "__main__":
    main()
