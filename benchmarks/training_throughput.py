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
yardstick's.

The TensorBoard part (``--part tensorboard``) measures what watching training costs
(:mod:`compressor.training.watch`: the validation PSNR/SSIM, the image every few epochs and the event files): the
student stage of a preset's data (``--tensorboard-preset``, default ``quick``, what ``compress`` runs; the student's
epochs are the cheapest, so the watch's share is largest there) is trained as stages of ``--tensorboard-epochs`` epochs
with and without the watch, ``--rounds`` times, the order swapped every round, in a process set up as ``compress``
sets up its own. A stage's whole time over its epochs is an epoch's time (the watch's start-up included); the overhead
is the median watched epoch over the median unwatched one, minus 1. The seconds spent inside the watch are also timed
directly in the watched stages, a figure that machine noise does not blur.

Writes ``benchmarks/results/training_throughput.{json,md}`` (a part measured alone replaces only its part of both).
Usage::

    python -m benchmarks.training_throughput [--rounds 3] [--steps 6] [--part speed-ups|tensorboard]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch
from tabulate import tabulate

from compressor import rundir
from compressor.config import DataConfig, load_config
from compressor.data import build_splits
from compressor.evaluate.metrics import slice_metrics
from compressor.export.runtimes.cpu import cpu_features
from compressor.io import load_json, save_json
from compressor.kd import build_kd_loss
from compressor.models import ModelOptions, build_model
from compressor.process import keep_freed_memory
from compressor.training.loop import TrainSettings, to_device, train_stage
from compressor.training.objectives import (
    Distillation,
    SFTWeights,
    StudentFriendlyTeacher,
    Supervised,
    TeacherFeatureCache,
    TrainingPhase,
)
from compressor.training.stages import model_options
from compressor.training.watch import IMAGE_EVERY_EPOCHS, StageWatch, ValidationScores

RESULTS = Path(__file__).resolve().parent / "results"
YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "yardstick" / "train_step.py"
SETTINGS = ("before", "after")
WATCH_SETTINGS = ("without", "with")
PARTS = ("speed-ups", "tensorboard")
TENSORBOARD_HEADING = "## TensorBoard logging overhead"


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


class TimedWatch(StageWatch):
    """A :class:`StageWatch` that adds up in :attr:`seconds` the time spent inside it: its metrics (collected in
    the validation pass and reduced after it), its start and its writes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    def timed(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            tick = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - tick
        return call

    def start(self, resumed_from: int) -> None:
        self.timed(super().start)(resumed_from)

    def scores(self, scored_size: tuple[int, int] | None, epoch: int, last_epoch: int) -> ValidationScores:
        scores = super().scores(scored_size, epoch, last_epoch)
        scores.add, scores.means = self.timed(scores.add), self.timed(scores.means)
        return scores

    def write(self, summary: Any) -> None:
        self.timed(super().write)(summary)


def time_tensorboard(preset: str, epochs: int, rounds: int, threads: int) -> dict[str, Any]:
    """Seconds per epoch of ``preset``'s student stage with and without the watch (module docstring), and the
    seconds per epoch spent inside the watch, after an untimed watched stage of one epoch as a warm-up."""
    torch.set_num_threads(threads)
    keep_freed_memory()  # as compress trains on the CPU
    config = load_config(preset)
    data, t = config.data, config.train
    splits = build_splits(data, data.acceleration[0], log=lambda _: None, image_channels=config.model.image_channels)
    settings = TrainSettings(batch_size=t.batch_size, lr=t.lr, lr_step=t.lr_step, lr_gamma=t.lr_gamma, seed=t.seed,
                             device=torch.device("cpu"), progress=False, scored_size=(data.image_size,) * 2)
    student = config.model.student[0]

    def train(watched: bool, stage_epochs: int) -> tuple[float, float]:
        """A fresh student stage's seconds per epoch, and those inside its watch (0 unwatched)."""
        torch.manual_seed(t.seed)
        objective = Supervised(build_model(student, model_options(config)), scored_size=settings.scored_size)
        with tempfile.TemporaryDirectory() as folder:
            stage_dir = Path(folder) / "stage"
            watch = TimedWatch(stage_dir / rundir.TENSORBOARD_FOLDER, slice_metrics, {"stage": "benchmark"}) \
                if watched else None
            result = train_stage(objective, [TrainingPhase("train", stage_epochs)], splits.train, splits.validation,
                                 settings, stage_dir, "benchmark", log=lambda _: None, watch=watch)
        return result.seconds / stage_epochs, watch.seconds / stage_epochs if watch else 0.0

    train(True, 1)
    seconds: dict[str, list[float]] = {setting: [] for setting in WATCH_SETTINGS}
    inside: list[float] = []
    for round_index in range(rounds):
        for setting in WATCH_SETTINGS[::1 if round_index % 2 == 0 else -1]:
            epoch_seconds, watch_seconds = train(setting == "with", epochs)
            seconds[setting].append(epoch_seconds)
            if setting == "with":
                inside.append(watch_seconds)
    return {"preset": preset, "student": student, "image_size": data.image_size, "batch_size": t.batch_size,
            "train_slices": len(splits.train), "validation_slices": len(splits.validation), "epochs": epochs,
            "rounds": rounds, "threads": threads, "epoch_seconds": seconds, "watch_seconds_per_epoch": inside}


def tensorboard_record(timings: dict[str, Any]) -> dict[str, Any]:
    """The TensorBoard part of the JSON record: the worker's timings and the figures derived from them."""
    without, watched = (statistics.median(timings["epoch_seconds"][s]) for s in WATCH_SETTINGS)
    inside = statistics.median(timings["watch_seconds_per_epoch"])
    cpu = cpu_features()
    return {**timings, "torch": torch.__version__, "cpu": cpu.to_json(), "cpu_description": cpu.describe(),
            "median_epoch_seconds_without": without, "median_epoch_seconds_with": watched,
            "overhead": watched / without - 1, "watch_share": inside / without}


def tensorboard_markdown(record: dict[str, Any]) -> str:
    r = record
    return (f"{TENSORBOARD_HEADING}\n\n"
            f"CPU: {r['cpu_description']}, {r['threads']} threads, PyTorch {r['torch']}; the {r['student']} student "
            f"stage of the `{r['preset']}` preset's data ({r['train_slices']} training and {r['validation_slices']} "
            f"validation slices of {r['image_size']}x{r['image_size']}, batch {r['batch_size']}), trained as "
            f"{r['epochs']}-epoch stages {r['rounds']} times with and {r['rounds']} times without the watch, the "
            f"order swapped every round, after an untimed warm-up stage. The watch: validation PSNR and SSIM every "
            f"epoch, an image every {IMAGE_EVERY_EPOCHS} epochs and at the last, the event files.\n\n"
            f"| | median s/epoch |\n|---|---|\n"
            f"| without TensorBoard | {r['median_epoch_seconds_without']:.3f} |\n"
            f"| with TensorBoard | {r['median_epoch_seconds_with']:.3f} |\n\n"
            f"Overhead: **{r['overhead']:+.2%}** of an epoch (median with / median without − 1). Time inside the "
            f"watch, timed directly: {1000 * statistics.median(r['watch_seconds_per_epoch']):.0f} ms per epoch, "
            f"**{r['watch_share']:.2%}** of an unwatched epoch.\n\n"
            f"Command: `python -m benchmarks.training_throughput --part tensorboard --tensorboard-preset {r['preset']} "
            f"--tensorboard-epochs {r['epochs']} --rounds {r['rounds']} --threads {r['threads']}`\n")


def _worker_command(setting: str, options: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "benchmarks.training_throughput", "--worker", setting,
            *[item for name, value in options.items() for item in (f"--{name.replace('_', '-')}", str(value))]]


def _run_worker(setting: str, options: dict[str, Any]) -> Any:
    result = subprocess.run(_worker_command(setting, options), capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_speedups(image_size: int, batch_size: int, steps: int, rounds: int, threads: int, block_form: str,
                     yardstick: Path) -> tuple[dict[str, Any], str]:
    """The before/after record and its Markdown (module docstring)."""
    options = {"image_size": image_size, "batch_size": batch_size, "steps": steps, "threads": threads,
               "block_form": block_form}
    timings: dict[str, dict[str, list[float]]] = {setting: {} for setting in SETTINGS}
    yardsticks: list[float] = []
    for round_index in range(rounds):
        for setting in SETTINGS:
            for name, values in _run_worker(setting, options).items():
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
    return record, speedups_markdown(record, cpu.describe(), yard)


def speedups_markdown(record: dict[str, Any], cpu: str, yard: float | None) -> str:
    def multiple(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "—"

    r, yardsticks = record, record["yardstick_seconds"]
    table = tabulate([[row["stage"], f"{row['ms_before']:.0f}", f"{row['ms_after']:.0f}", f"{row['speedup']:.2f}x",
                       f"{row['slices_per_second_before']:.1f}", f"{row['slices_per_second_after']:.1f}",
                       multiple(row["yardstick_multiple_before"]), multiple(row["yardstick_multiple_after"])]
                      for row in record["stages"]],
                     headers=["stage", "ms/batch before", "ms/batch after", "speed-up", "slices/s before",
                              "slices/s after", "x yardstick before", "x yardstick after"], tablefmt="github")
    yard_text = (f"yardstick {yard:.3f} s per step (median of {len(yardsticks)}: "
                 f"{', '.join(f'{y:.3f}' for y in yardsticks)})" if yard else "no yardstick (script not found)")
    return (f"# Training throughput per stage, before and after\n\n"
            f"CPU: {cpu}, {r['threads']} threads, PyTorch {r['torch']}; d5c5 teacher, d3c5 student, "
            f"AT; {r['image_size']}x{r['image_size']} MNI, batch {r['batch_size']}, {r['block_form']} blocks; "
            f"{yard_text}. Medians of {r['rounds']} x {r['steps_per_round']} steps per stage; rounds alternate "
            f"before / after / yardstick, stages take turns within a process.\n\n"
            f"before: teacher recomputed every distillation batch, glibc's default allocator. after: teacher "
            f"features cached per slice, freed activations kept in the heap (what `compress` runs). "
            f"The cached rows are the steady state: the first epoch computes each slice's teacher features "
            f"once.\n\n"
            f"{table}\n")


def write_results(out: Path, speedups: tuple[dict[str, Any], str] | None,
                  tensorboard: tuple[dict[str, Any], str] | None) -> str:
    """Write the JSON record and the Markdown; a part not measured keeps what the files held. Returns the
    Markdown."""
    record = load_json(out) if out.is_file() else {}
    old_markdown = out.with_suffix(".md").read_text() if out.with_suffix(".md").is_file() else ""
    old_speedups, heading, old_tensorboard = old_markdown.partition(TENSORBOARD_HEADING)
    sections = [speedups[1] if speedups else old_speedups, tensorboard[1] if tensorboard else heading + old_tensorboard]
    if speedups:
        record = {**speedups[0], **({"tensorboard": record["tensorboard"]} if "tensorboard" in record else {})}
    if tensorboard:
        record["tensorboard"] = tensorboard[0]
    save_json(out, record)
    markdown = "\n".join(section.strip() + "\n" for section in sections if section.strip())
    out.with_suffix(".md").write_text(markdown)
    return markdown


@click.command(context_settings={"show_default": True})
@click.option("--image-size", default=120, help="Square image size (MNI, in-plane downsampled to fit).")
@click.option("--batch-size", default=4)
@click.option("--steps", default=6, help="Timed steps per stage per round (after 2 warm-up steps).")
@click.option("--rounds", default=3, help="Rounds of (before, after, yardstick), and of (with, without) TensorBoard.")
@click.option("--threads", default=2)
@click.option("--block-form", default="residual", type=click.Choice(["plain", "residual"]))
@click.option("--yardstick", type=click.Path(path_type=Path), default=YARDSTICK,
              help="The machine's yardstick script (skipped when absent: no yardstick multiples).")
@click.option("--part", type=click.Choice(["all", *PARTS]), default="all",
              help="What to measure; a part measured alone replaces only its part of the results.")
@click.option("--tensorboard-preset", default="quick", help="The preset whose student stage the TensorBoard part "
                                                            "trains (its data, batch and learning rate).")
@click.option("--tensorboard-epochs", default=5, help="Epochs per stage of the TensorBoard part.")
@click.option("--worker", type=click.Choice([*SETTINGS, "tensorboard"]), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "training_throughput.json")
def main(image_size: int, batch_size: int, steps: int, rounds: int, threads: int, block_form: str, yardstick: Path,
         part: str, tensorboard_preset: str, tensorboard_epochs: int, worker: str | None, out: Path) -> None:
    if worker == "tensorboard":  # the TensorBoard part's process: its timings as JSON for the parent
        print(json.dumps(time_tensorboard(tensorboard_preset, tensorboard_epochs, rounds, threads)))
        return
    if worker:  # one setting's process: print its timings as JSON for the parent
        print(json.dumps(time_stages(worker, image_size, batch_size, steps, threads, block_form)))
        return
    speedups = tensorboard = None
    if part in ("all", "speed-ups"):
        speedups = measure_speedups(image_size, batch_size, steps, rounds, threads, block_form, yardstick)
    if part in ("all", "tensorboard"):
        timings = _run_worker("tensorboard", {"tensorboard_preset": tensorboard_preset, "rounds": rounds,
                                              "tensorboard_epochs": tensorboard_epochs, "threads": threads})
        record = tensorboard_record(timings)
        tensorboard = record, tensorboard_markdown(record)
    print(write_results(out, speedups, tensorboard))


if __name__ == "__main__":
    main()
