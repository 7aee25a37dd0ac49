"""Trained models on simulated multi-coil scans whose coils and noise training never saw (issue 27).

Each run's five stages (teacher, SFT teacher, student, Std-KD, SFT-KD-Recon) reconstruct the same slices of the
embedded MNI data (their synthetic phase, then a simulated multi-coil scan read as ``compress serve`` reads it:
:mod:`compressor.data.coil_simulation`) under evaluation conditions (:data:`CONDITIONS`): other coil counts, ring
radii outside the training range, other noise correlation and SNR, and seeds no training slice used. Every model
takes the virtual coil's zero-filled input of the run's mask and is scored as every table of the tool scores: the
magnitude against the noise-free virtual-coil target's, on the scored region, in the input's units, PSNR and SSIM with
the target slice's maximum as data range. Per model the gain over the zero-filled input; within a run the paired
Wilcoxon tests of the five-stage table (SFT-KD-Recon against Std-KD, Std-KD against the student, the SFT teacher
against the teacher); between runs the same model against the first run's. Writes
``benchmarks/results/multicoil_generalisation.{json,md}``. Usage::

    python -m benchmarks.multicoil_generalisation --run phase-only=runs/quick-complex \\
        --run multi-coil=runs/quick-multicoil

The runs must share a mask (both presets use quick's). ``--split test`` (the default) evaluates the held-out slices:
validation picked each stage's best weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import numpy as np
import torch
from tabulate import tabulate

from compressor import rundir
from compressor.data import DataSplits, SliceDataset, build_splits
from compressor.data.coil_simulation import CoilSimulation
from compressor.data.transforms import scored_image
from compressor.evaluate.metrics import slice_metrics
from compressor.evaluate.stats import summarise, wilcoxon_test
from compressor.export.run_models import RunModel, load_run_models, load_stage
from compressor.io import save_json

RESULTS = Path(__file__).resolve().parent / "results"
ROLES = ("teacher", "sft_teacher", "student", "std_kd", "sft_kd")
TESTS = (("sft_kd", "std_kd"), ("std_kd", "student"), ("sft_teacher", "teacher"), ("sft_kd", "student"))
"""The five-stage table's paired tests: (model, against)."""
CONDITIONS = {
    "12-coils-close": CoilSimulation(coils=12, snr_db=20.0, seed=1234, ring_radius=1.25, noise_correlation=0.5),
    "4-coils-far-15db": CoilSimulation(coils=4, snr_db=15.0, seed=4321, ring_radius=2.2,
                                               noise_correlation=0.5),
    "12-coils-close-30db": CoilSimulation(coils=12, snr_db=30.0, seed=1234, ring_radius=1.25, noise_correlation=0.5),
    "8-coils-training-like": CoilSimulation(coils=8, snr_db=20.0, seed=99),
}
"""Evaluation scans. Training (``quick-multicoil``) used 8 coils on a ring of radius 1.6 × U[0.9, 1.1] (1.44-1.76),
noise correlation 0.3, SNR 20 dB, seed 0; the first three rings (1.125-1.375 and 1.98-2.42) lie outside that range;
the third is the first at 30 dB (an SNR neither regime trained at); the last is training's geometry with another seed
(a reference: coils like training's, draws not)."""


def condition_slices(run: Path, simulation: CoilSimulation, split: str
                     ) -> tuple[DataSplits, SliceDataset, tuple[int, int]]:
    """The splits of ``run``'s data with the scans of ``simulation`` (synthetic phase, simulated coils), the
    ``split`` (``test`` or ``validation``) dataset of them and the scored region's size."""
    data = dataclasses.replace(rundir.read_config(run).data, phase="synthetic", coils=simulation.coils,
                               snr=simulation.snr_db, coil_seed=simulation.seed,
                               coil_ring_radius=simulation.ring_radius,
                               noise_correlation=simulation.noise_correlation,
                               readout_oversampling=simulation.oversampling)
    splits = build_splits(data, data.acceleration[0], log=lambda _: None, image_channels=2)
    return splits, splits.test if split == "test" else splits.validation, (data.image_size, data.image_size)


def magnitudes(batches: list, field: str, size: tuple[int, int]) -> np.ndarray:
    """``|x|`` ``(S, H', W')`` of the batches' ``target`` or ``zero_filled`` in the input's units, scored region."""
    return np.concatenate([scored_image(getattr(b, field) * b.scale[:, None, None, None], size).abs().numpy()
                           for b in batches])


@torch.no_grad()
def reconstruct(model: RunModel, batches: list, size: tuple[int, int]) -> np.ndarray:
    """``|x̂|`` ``(S, H', W')`` of ``model`` on ``batches`` in the input's units, scored region."""
    return np.concatenate([scored_image(model.model(b.zero_filled, b.kspace, b.mask) * b.scale[:, None, None, None],
                                        size).abs().numpy() for b in batches])


def consistency_ceiling(batches: list, size: tuple[int, int]) -> np.ndarray:
    """``|x_c|`` ``(S, H', W')``: the measured (noisy) samples kept and every other sample the target's, ``x_c =
    F^{-1}(M y + (1 - M) F x)``: what a perfect network gives once a hard data-fidelity layer (λ → ∞) puts the
    measurements back, so the bound of any DC-CNN's PSNR against the noise-free target."""
    images = []
    for b in batches:
        target, zero_filled = (torch.complex(t[:, 0], t[:, 1]).numpy() * b.scale.numpy()[:, None, None]
                               for t in (b.target, b.zero_filled))
        mask = b.mask[:, 0].numpy()
        kept = mask * np.fft.fft2(zero_filled, norm="ortho") + (1 - mask) * np.fft.fft2(target, norm="ortho")
        images.append(scored_image(torch.from_numpy(np.abs(np.fft.ifft2(kept, norm="ortho")))[:, None], size).numpy())
    return np.concatenate(images)


def scores(images: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    return slice_metrics(images, target, ("psnr", "ssim"))


def evaluate_condition(runs: dict[str, Path], models: dict[str, list[RunModel]], simulation: CoilSimulation,
                       split: str) -> dict:
    """Every run's five stages on one condition's slices: per-slice PSNR/SSIM, gains and tests."""
    splits, dataset, size = condition_slices(next(iter(runs.values())), simulation, split)
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=8))
    target = magnitudes(batches, "target", size)
    zero_filled = scores(magnitudes(batches, "zero_filled", size), target)
    ceiling = scores(consistency_ceiling(batches, size), target)
    record = {"simulation": dataclasses.asdict(simulation), "split": split, "slices": len(target),
              "zero_filled": {name: summarise(values).mean for name, values in zero_filled.items()},
              "ceiling": {name: summarise(values).mean for name, values in ceiling.items()}, "runs": {}}
    per_slice = {}
    for label, run_models in models.items():
        entries = {}
        for role in ROLES:
            model = next((m for m in run_models if m.role == role), None)
            if model is None:
                continue
            if model.mask.digest() != splits.mask.digest():
                raise click.UsageError(f"{runs[label]}: the {role} model was trained with another mask")
            values = scores(reconstruct(model, batches, size), target)
            per_slice[(label, role)] = values
            entries[role] = {"arch": model.stage.arch, **{name: summarise(v).mean for name, v in values.items()},
                             "psnr_std": summarise(values["psnr"]).std,
                             "gain_db": float(np.mean(values["psnr"] - zero_filled["psnr"]))}
        for first, second in TESTS:
            if first not in entries or second not in entries:
                continue
            for name in ("psnr", "ssim"):
                test = wilcoxon_test(per_slice[(label, second)][name], per_slice[(label, first)][name])
                entries[first][f"p_{name}_vs_{second}"] = test.p_value
        record["runs"][label] = entries
    first_run = next(iter(models))
    for label in list(models)[1:]:
        for role in ROLES:
            if (first_run, role) not in per_slice or (label, role) not in per_slice:
                continue
            test = wilcoxon_test(per_slice[(first_run, role)]["psnr"], per_slice[(label, role)]["psnr"])
            record["runs"][label][role][f"p_psnr_vs_{first_run}"] = test.p_value
    return record


def table(record: dict) -> str:
    """The five-stage table of one condition, the runs side by side."""
    labels = list(record["runs"])
    headers = ["model"] + [f"{label}: {column}" for label in labels for column in ("PSNR (dB)", "SSIM", "gain (dB)")]
    rows = [["ZF (virtual coil)"] + [f"{record['zero_filled']['psnr']:.2f}", f"{record['zero_filled']['ssim']:.4f}",
                                     "—"] * len(labels)]
    rows.append(["hard-DC ceiling"] + [f"{record['ceiling']['psnr']:.2f}", f"{record['ceiling']['ssim']:.4f}",
                                       f"{record['ceiling']['psnr'] - record['zero_filled']['psnr']:+.2f}"]
                * len(labels))
    for role in ROLES:
        arch = next((record["runs"][label][role]["arch"] for label in labels if role in record["runs"][label]), "")
        row = [f"{rundir.ROLE_LABELS[role]} {arch}"]
        for label in labels:
            entry = record["runs"][label].get(role)
            if entry is None:
                row += ["—"] * 3
                continue
            marks = "".join(mark for (first, second), mark in zip(TESTS, ("*", "†", "‡", "§"), strict=True)
                            if first == role and entry.get(f"p_psnr_vs_{second}", 1.0) < 0.05)
            row += [f"{entry['psnr']:.2f} ± {entry['psnr_std']:.2f}{marks}", f"{entry['ssim']:.4f}",
                    f"{entry['gain_db']:+.2f}"]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github")


def notes(record: dict) -> str:
    simulation = CoilSimulation(**record["simulation"])
    lines = [f"{record['slices']} {record['split']} slices; {simulation.describe()}.",
             "Hard-DC ceiling: the target's k-space outside the mask and the measured noisy samples inside it, the "
             "best any DC-CNN whose data fidelity puts the measurements back (λ → ∞) can score against the "
             "noise-free target.",
             "*: SFT-KD-Recon differs from Std-KD, †: Std-KD from the student, ‡: the SFT teacher from the teacher, "
             "§: SFT-KD-Recon from the student (paired Wilcoxon on per-slice PSNR, p < 0.05). p-values:"]
    labels = list(record["runs"])
    for label in labels:
        entries = record["runs"][label]
        lines.append(f"- {label}: " + "; ".join(
            f"{rundir.ROLE_LABELS[first]} vs {rundir.ROLE_LABELS[second]} PSNR p = "
            f"{entries[first][f'p_psnr_vs_{second}']:.2g}, SSIM p = {entries[first][f'p_ssim_vs_{second}']:.2g}"
            for first, second in TESTS if f"p_psnr_vs_{second}" in entries.get(first, {})))
    for label in labels[1:]:
        lines.append(f"- {label} against {labels[0]}, same model (PSNR): " + "; ".join(
            f"{rundir.ROLE_LABELS[role]} {record['runs'][label][role][f'p_psnr_vs_{labels[0]}']:.2g}"
            for role in ROLES if f"p_psnr_vs_{labels[0]}" in record["runs"][label].get(role, {})))
    return "\n".join(lines)


def run_models(run: Path) -> list[RunModel]:
    """The run's trained models; a run still training (no ``results.json`` yet) gives the stages it has finished
    (those that wrote their test metrics)."""
    if rundir.RunLayout(run).results.is_file():
        return load_run_models(run)
    return [load_stage(stage.parent) for stage in sorted(run.glob("stages/*/metrics_test.json"))]


def _runs(items: tuple[str, ...]) -> dict[str, Path]:
    runs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise click.BadParameter(f"expected LABEL=RUN_DIR with an existing run directory, got {item!r}",
                                     param_hint="--run")
        runs[label] = Path(path)
    return runs


@click.command()
@click.option("--run", "run_items", multiple=True, required=True, metavar="LABEL=RUN_DIR",
              help="A run directory and its label in the tables (repeatable; the first is the reference).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", help="The MNI slices used.")
@click.option("--conditions", default=",".join(CONDITIONS), help="Evaluation conditions, comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "multicoil_generalisation.json")
def main(run_items: tuple[str, ...], split: str, conditions: str, out: Path) -> None:
    runs = _runs(run_items)
    models = {label: run_models(path) for label, path in runs.items()}
    record = {"runs": {label: str(path) for label, path in runs.items()}, "torch": torch.__version__,
              "conditions": {}}
    text = []
    for name in conditions.split(","):
        if name not in CONDITIONS:
            raise click.BadParameter(f"unknown condition {name!r}; valid: {', '.join(CONDITIONS)}",
                                     param_hint="--conditions")
        result = evaluate_condition(runs, models, CONDITIONS[name], split)
        record["conditions"][name] = result
        text.append(f"### {name}\n\n{table(result)}\n\n{notes(result)}\n")
        click.echo(text[-1])
    save_json(out, record)
    out.with_suffix(".md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
