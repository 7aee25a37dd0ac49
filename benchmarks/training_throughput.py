"""Training throughput per stage (slices per second), on the embedded MNI data.

Times optimisation steps of each stage's objective (teacher, student, Std-KD, SFT teacher, SFT-KD) in one
process, interleaved round-robin so that machine noise hits every stage alike, and writes the medians to
``benchmarks/results/training_throughput.{json,md}``. Usage::

    python -m benchmarks.training_throughput --image-size 120 --batch-size 4 --steps 12
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import click
import torch
from tabulate import tabulate

from compressor.config import DataConfig
from compressor.data import build_splits
from compressor.io import save_json
from compressor.kd import build_kd_loss
from compressor.models import ModelOptions, build_model
from compressor.training.loop import to_device
from compressor.training.objectives import Distillation, SFTWeights, StudentFriendlyTeacher, Supervised

RESULTS = Path(__file__).resolve().parent / "results"


def objectives(teacher: str, student: str, method: str, options: ModelOptions) -> dict:
    def model(arch: str):
        return build_model(arch, options)

    return {
        "teacher": Supervised(model(teacher)),
        "student": Supervised(model(student)),
        "std_kd / sft_kd": Distillation(model(student), model(teacher), build_kd_loss(method), 1.0),
        "sft_teacher": StudentFriendlyTeacher(model(teacher), model(student), SFTWeights()),
    }


@click.command(context_settings={"show_default": True})
@click.option("--image-size", default=120, help="Square image size (MNI, in-plane downsampled to fit).")
@click.option("--batch-size", default=4)
@click.option("--steps", default=12, help="Timed steps per stage (after 2 warm-up steps).")
@click.option("--threads", default=2)
@click.option("--block-form", default="residual", type=click.Choice(["plain", "residual"]))
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "training_throughput.json")
def main(image_size: int, batch_size: int, steps: int, threads: int, block_form: str, out: Path) -> None:
    torch.set_num_threads(threads)
    downsample = max(1, 240 // image_size)
    splits = build_splits(DataConfig(image_size=image_size, downsample=downsample), 4.0, log=print)
    batch = to_device(next(iter(torch.utils.data.DataLoader(splits.train, batch_size=batch_size))), torch.device("cpu"))
    stages = objectives("d5c5", "d3c5", "at", ModelOptions(block_form=block_form))
    optimizers = {name: torch.optim.Adam(o.trainable(), lr=1e-3) for name, o in stages.items()}
    timings: dict[str, list[float]] = {name: [] for name in stages}
    for step in range(steps + 2):
        for name, objective in stages.items():
            objective.train_mode()
            tick = time.perf_counter()
            loss = objective.loss(batch)
            optimizers[name].zero_grad(set_to_none=True)
            loss.total.backward()
            optimizers[name].step()
            if step >= 2:
                timings[name].append(time.perf_counter() - tick)
    rows = [{"stage": name, "ms_per_batch": 1000 * statistics.median(t),
             "slices_per_second": batch_size / statistics.median(t)} for name, t in timings.items()]
    record = {"image_size": image_size, "batch_size": batch_size, "threads": threads, "block_form": block_form,
              "steps": steps, "torch": torch.__version__, "machine": platform.platform(),
              "cpus": torch.get_num_threads(), "stages": rows}
    save_json(out, record)
    table = tabulate([[r["stage"], f"{r['ms_per_batch']:.0f}", f"{r['slices_per_second']:.1f}"] for r in rows],
                     headers=["stage", "ms / batch (median)", "slices / s"], tablefmt="github")
    markdown = (f"# Training throughput per stage\n\nd5c5 teacher, d3c5 student, AT; {image_size}x{image_size} MNI, "
                f"batch {batch_size}, {threads} threads, {block_form} blocks, PyTorch {torch.__version__} on CPU; "
                f"median of {steps} steps, stages interleaved.\n\n{table}\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(json.dumps(record["stages"], indent=1))


if __name__ == "__main__":
    main()
