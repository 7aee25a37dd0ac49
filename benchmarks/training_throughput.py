"""Training throughput per stage (slices per second) before and after this tool's CPU speed-ups, in yardstick steps.

Each stage's objective (teacher, student, Std-KD/SFT-KD, SFT teacher; d5c5 teacher, d3c5 student, AT) takes
optimisation steps on one batch of the embedded MNI data. Two settings are compared:

* ``before``: the teacher recomputed on every distillation batch, glibc's default allocator;
* ``after``: the frozen teacher's features cached per slice
  (:class:`~compressor.training.objectives.TeacherFeatureCache`) and freed activations kept in the heap
  (:func:`~compressor.process.keep_freed_memory`), as ``compress`` trains.

The allocator setting is process-wide and cannot be undone, so each setting runs in a process of its own. The
rounds alternate ``before``, ``after`` and the machine's yardstick (``../shared/yardstick/train_step.py``: one plain
d5c5 training step, batch 4, 120x120) so that machine noise hits all three alike; within a process the stages take
turns step by step. Medians over every timed step; the yardstick multiple is a stage's step time over the
yardstick's. Writes ``benchmarks/results/training_throughput.{json,md}``. Usage::

    python -m benchmarks.training_throughput [--rounds 3] [--steps 6]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import torch
from tabulate import tabulate

from compressor.config import DataConfig
from compressor.data import build_splits
from compressor.export.runtimes.cpu import cpu_features
from compressor.io import save_json
from compressor.kd import build_kd_loss
from compressor.models import ModelOptions, build_model
from compressor.process import keep_freed_memory
from compressor.training.loop import to_device
from compressor.training.objectives import (
    Distillation,
    SFTWeights,
    StudentFriendlyTeacher,
    Supervised,
    TeacherFeatureCache,
)

RESULTS = Path(__file__).resolve().parent / "results"
YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "yardstick" / "train_step.py"
SETTINGS = ("before", "after")


def objectives(teacher: str, student: str, method: str, options: ModelOptions, cached: bool, slices: int) -> dict:
    def model(arch: str):
        torch.manual_seed(0)
        return build_model(arch, options)

    cache = TeacherFeatureCache(slices, 2**31, log=print) if cached else None
    return {
        "teacher": Supervised(model(teacher)),
        "student": Supervised(model(student)),
        "std_kd / sft_kd": Distillation(model(student), model(teacher), build_kd_loss(method), 1.0,
                                        teacher_cache=cache),
        "sft_teacher": StudentFriendlyTeacher(model(teacher), model(student), SFTWeights()),
    }


def time_stages(setting: str, image_size: int, batch_size: int, steps: int, threads: int, block_form: str) -> dict:
    """Seconds per step of every stage in this process, stages taking turns; ``after`` caches the teacher and
    keeps freed memory. Two warm-up steps per stage (the first also fills the teacher cache)."""
    torch.set_num_threads(threads)
    if setting == "after":
        keep_freed_memory()
    downsample = max(1, 240 // image_size)
    splits = build_splits(DataConfig(image_size=image_size, downsample=downsample), 4.0, log=lambda _: None)
    batch = to_device(next(iter(torch.utils.data.DataLoader(splits.train, batch_size=batch_size))), torch.device("cpu"))
    stages = objectives("d5c5", "d3c5", "at", ModelOptions(block_form=block_form), setting == "after", batch_size)
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
    return timings


def yardstick_step(path: Path, steps: int) -> float | None:
    """Seconds per yardstick step, from a run of the yardstick script in its own process (``None`` without it)."""
    if not path.is_file():
        return None
    text = subprocess.run([sys.executable, str(path), str(steps)], capture_output=True, text=True, check=True).stdout
    return float(text.split()[0])


@click.command(context_settings={"show_default": True})
@click.option("--image-size", default=120, help="Square image size (MNI, in-plane downsampled to fit).")
@click.option("--batch-size", default=4)
@click.option("--steps", default=6, help="Timed steps per stage per round (after 2 warm-up steps).")
@click.option("--rounds", default=3, help="Rounds of (before, after, yardstick), alternating.")
@click.option("--threads", default=2)
@click.option("--block-form", default="residual", type=click.Choice(["plain", "residual"]))
@click.option("--yardstick", type=click.Path(path_type=Path), default=YARDSTICK,
              help="The machine's yardstick script (skipped when absent: no yardstick multiples).")
@click.option("--worker", type=click.Choice(SETTINGS), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "training_throughput.json")
def main(image_size: int, batch_size: int, steps: int, rounds: int, threads: int, block_form: str, yardstick: Path,
         worker: str | None, out: Path) -> None:
    if worker:  # one setting's process: print its timings as JSON for the parent
        print(json.dumps(time_stages(worker, image_size, batch_size, steps, threads, block_form)))
        return
    timings: dict[str, dict[str, list[float]]] = {setting: {} for setting in SETTINGS}
    yardsticks: list[float] = []
    for round_index in range(rounds):
        for setting in SETTINGS:
            command = [sys.executable, "-m", "benchmarks.training_throughput", "--worker", setting,
                       "--image-size", str(image_size), "--batch-size", str(batch_size), "--steps", str(steps),
                       "--threads", str(threads), "--block-form", block_form]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            for name, values in json.loads(result.stdout.strip().splitlines()[-1]).items():
                timings[setting].setdefault(name, []).extend(values)
        step = yardstick_step(yardstick, 10)
        if step is not None:
            yardsticks.append(step)
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)
    yard = statistics.median(yardsticks) if yardsticks else None
    rows = []
    for name in timings["before"]:
        before, after = (statistics.median(timings[s][name]) for s in SETTINGS)
        rows.append({"stage": name, "ms_before": 1000 * before, "ms_after": 1000 * after, "speedup": before / after,
                     "slices_per_second_before": batch_size / before, "slices_per_second_after": batch_size / after,
                     "yardstick_multiple_before": before / yard if yard else None,
                     "yardstick_multiple_after": after / yard if yard else None})
    cpu = cpu_features()
    record = {"image_size": image_size, "batch_size": batch_size, "threads": threads, "block_form": block_form,
              "steps_per_round": steps, "rounds": rounds, "torch": torch.__version__, "cpu": cpu.to_json(),
              "yardstick_seconds": yardsticks, "stages": rows}
    save_json(out, record)

    def multiple(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "—"

    table = tabulate([[r["stage"], f"{r['ms_before']:.0f}", f"{r['ms_after']:.0f}", f"{r['speedup']:.2f}x",
                       f"{r['slices_per_second_before']:.1f}", f"{r['slices_per_second_after']:.1f}",
                       multiple(r["yardstick_multiple_before"]), multiple(r["yardstick_multiple_after"])]
                      for r in rows],
                     headers=["stage", "ms/batch before", "ms/batch after", "speed-up", "slices/s before",
                              "slices/s after", "x yardstick before", "x yardstick after"], tablefmt="github")
    yard_text = (f"yardstick {yard:.3f} s per step (median of {len(yardsticks)}: "
                 f"{', '.join(f'{y:.3f}' for y in yardsticks)})" if yard else "no yardstick (script not found)")
    markdown = (f"# Training throughput per stage, before and after\n\n"
                f"CPU: {cpu.describe()}, {threads} threads, PyTorch {torch.__version__}; d5c5 teacher, d3c5 student, "
                f"AT; {image_size}x{image_size} MNI, batch {batch_size}, {block_form} blocks; {yard_text}. Medians of "
                f"{rounds} x {steps} steps per stage; rounds alternate before / after / yardstick, stages take turns "
                f"within a process.\n\n"
                f"before: teacher recomputed every distillation batch, glibc's default allocator. after: teacher "
                f"features cached per slice, freed activations kept in the heap (what `compress` runs). "
                f"The cached rows are the steady state: the first epoch computes each slice's teacher features "
                f"once.\n\n"
                f"{table}\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
