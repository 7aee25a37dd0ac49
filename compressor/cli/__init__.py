"""The ``compress`` command: teacher → SFT → KD pipeline, plus ``models``, ``export``, ``reconstruct``,
``benchmark``, ``serve`` and ``report`` subcommands (one module each beside this one, shared plumbing in
:mod:`compressor.cli.common`). Commands are thin: they parse options into typed requests, call the library
(:mod:`compressor.workflow`: the run flow, the export job) and print what it gives them through
:data:`~compressor.cli.common.CONSOLE`; heavy imports happen inside the commands. Bad input is one ``Error:`` line
and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compressor.cli.common import (
    CONSOLE,
    OneLineErrors,
    UserError,
    comma_separated,
    handles_input_errors,
    option_group,
    require_writable,
)
from compressor.masks import MASKS
from compressor.vocabulary import BlockForm, ImagePhase, KDMode, KDSchedule, Task, values

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}
MAIN_GROUPS = ("Run", "Models", "Data", "Training", "Distillation", "Deployment")
"""The ``--help`` sections of ``compress``'s options, in order."""
run_option, model_option, data_option, training_option, kd_option, deploy_option = map(option_group, MAIN_GROUPS)


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.group(cls=OneLineErrors, invoke_without_command=True, context_settings=CONTEXT, option_groups=MAIN_GROUPS)
@run_option("--preset", default="quick", help="Preset in configs/ (smoke, quick, paper) or a TOML file path.")
@run_option("--task", type=click.Choice(values(Task)),
            help="reconstruction (undersampled k-space) or sr (super-resolution, Appendix B; --acceleration is the "
                 "scale; teacher/student default to vdsr12/vdsr4).")
@model_option("--teacher", help="Teacher architecture, e.g. d5c5, dcunet5, vdsr12.")
@model_option("--student", help="Student architecture(s), comma-separated, e.g. d3c5 or d4c5,d3c5,d2c5.")
@kd_option("--method", help="KD method(s), comma-separated, or 'all' (the task's table: at, fitnets, sp, fsp, cc; "
                            "sr: at, fitnets, cc, pkt, ft, nst).")
@data_option("--data", "source", help="Data source: mni (embedded), project, fastmri, nifti, authors.")
@data_option("--train", "train_path", help="Training file or folder (file sources).")
@data_option("--validation", "validation_path", help="Validation file or folder (file sources).")
@data_option("--test", "test_path", help="Held-out test file or folder (file sources; optional).")
@data_option("--acceleration", help="Acceleration factor(s), comma-separated, e.g. 4,5.")
@data_option("--mask-type", type=click.Choice(MASKS.names()), help="Generated mask type.")
@data_option("--mask", "mask_file", help="Mask .npy file ('{acceleration}' is replaced by the factor).")
@data_option("--image-size", type=int, help="Square image size (centre crop/pad).")
@training_option("--epochs", type=int, help="Epochs for every stage (overrides the per-stage preset values).")
@training_option("--batch-size", type=int, help="Batch size.")
@training_option("--lr", type=float, help="Adam learning rate.")
@training_option("--device", help="auto, cpu, cuda or cuda:N.")
@training_option("--amp/--no-amp", default=None, help="bfloat16 autocast for the convolutions on CUDA (DF stays fp32).")
@training_option("--seed", type=int, help="Seed for initialisation, shuffling and the mask.")
@model_option("--block-form", type=click.Choice(values(BlockForm)), help="DC-CNN block form.")
@model_option("--channels", "image_channels", type=click.IntRange(1, 2),
              help="Image channels: 1, the paper's real image; 2, the complex image (real, imag) for data with phase.")
@data_option("--phase", type=click.Choice(values(ImagePhase)),
             help="Embedded data only: 'synthetic' multiplies the MNI magnitude by a smooth seeded phase "
                  "(a simulation of phase-carrying data).")
@data_option("--coils", type=click.IntRange(1, 64),
             help="Images-only data and 2-channel models: simulate N receive coils per slice (Biot-Savart, "
                  "correlated noise, a noise scan, 2x readout oversampling) and read them as compress serve does "
                  "(prewhitening, one SVD virtual coil).")
@data_option("--snr", type=float, metavar="DB", help="With --coils: the simulated scans' SNR in dB (default 20).")
@data_option("--coil-seed", type=int, help="With --coils: seed of the coil placements, phases and noise.")
@kd_option("--kd-weight", type=float,
           help="Distillation weight for every method (default: the preset's kd.method_weights, else each "
                "method's documented weight).")
@kd_option("--kd-schedule", type=click.Choice(values(KDSchedule)), help="Paper (joint) or authors' schedule.")
@kd_option("--kd-mode", type=click.Choice(values(KDMode)), help="Each method as its paper or the authors.")
@kd_option("--sft-weights", help="SFT loss weights w_T,w_S,w_I (paper: 1,1,1).")
@kd_option("--random-init/--no-random-init", default=None, help="Also run SFT-KD from a random student (Table 5).")
@kd_option("--feature-sft/--no-feature-sft", default=None,
           help="Also run the feature-domain SFT ablation (Tables 2/4: rcnn25/rcnn15, MSE losses).")
@model_option("--init-teacher", help="Warm-start the teacher and SFT teacher from these weights (.safetensors or a "
                                     "stage directory of another run); the SFT teacher from scratch is the reference.")
@run_option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
            help="Override any config value, e.g. --set train.lr_step=20 --set sft.imitation_per_pixel=true "
                 "(VALUE in TOML syntax; repeatable).")
@run_option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/default"),
            help="Run directory (stages are cached there).")
@run_option("--progress/--no-progress", default=True, help="Progress bars.")
@training_option("--tensorboard/--no-tensorboard", default=None,
                 help="TensorBoard events of every training stage in RUN/stages/<stage>/tensorboard "
                      "(tensorboard --logdir RUN); default on (train.tensorboard).")
@deploy_option("--deploy/--no-deploy", default=True,
               help="After training, export every trained model to validated ONNX and benchmark latency.")
@deploy_option("--precision", default="fp32",
               help="Precisions of the deployed ONNX files, comma-separated: fp32, int8, fp16 (each its own validated "
                    "file, see compress export --precision); checked before anything trains.")
@click.pass_context
@handles_input_errors
def main(ctx: click.Context, preset: str, out: Path, progress: bool, deploy: bool, precision: str,
         **options: object) -> None:
    """Compress a DC-CNN MRI reconstruction teacher into a student with SFT-KD-Recon.

    Without a subcommand, runs teacher → student → Std-KD → SFT teacher → SFT-KD for each method and prints the
    paper's Table 1 for the run. Example: compress --teacher d5c5 --student d3c5 --method at
    (super-resolution: compress --task sr --teacher vdsr12 --student vdsr4 --method pkt)
    """
    if ctx.invoked_subcommand is not None:
        return
    from compressor.config import apply_overrides, load_config
    from compressor.export.targets.registry import precision_targets
    from compressor.training.distributed import CollectiveError
    from compressor.workflow.run import RunRequest, run_pipeline

    targets = tuple(precision_targets(precision))  # an unknown precision stops here, before anything trains
    settings = _settings(options.pop("settings"))
    config = apply_overrides(apply_overrides(load_config(preset), _overrides(options)), settings)
    try:
        run_pipeline(RunRequest(config, out, progress, deploy, targets), CONSOLE)
    except CollectiveError as error:  # another process of a torchrun run failed: this rank's one line
        raise UserError(str(error)) from None


def _settings(items: tuple[str, ...]) -> dict[str, object]:
    """``SECTION.KEY=VALUE`` pairs, VALUE parsed as a TOML value (a bare word is taken as a string)."""
    import tomllib

    parsed: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            parsed[key.strip()] = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            parsed[key.strip()] = text.strip()
    return parsed


SR_MODELS = ("vdsr12", "vdsr4")
"""Appendix B.1's teacher and student, the defaults of ``--task sr``."""


def _overrides(o: dict) -> dict[str, object]:
    epochs = o["epochs"]
    sft = _floats(o["sft_weights"])
    if sft is not None and len(sft) != 3:
        raise click.BadParameter("expected three weights w_T,w_S,w_I", param_hint="--sft-weights")
    teacher, student = o["teacher"], o["student"]
    if o["task"] == "sr":
        teacher, student = teacher or SR_MODELS[0], student or SR_MODELS[1]
    return {
        "data.task": o["task"], "model.init_teacher": o["init_teacher"], "sft.feature_ablation": o["feature_sft"],
        "model.teacher": teacher, "model.student": comma_separated(student), "model.block_form": o["block_form"],
        "model.image_channels": o["image_channels"], "data.phase": o["phase"],
        "data.coils": o["coils"], "data.snr": o["snr"], "data.coil_seed": o["coil_seed"],
        "kd.method": comma_separated(o["method"]), "kd.weight": o["kd_weight"], "kd.schedule": o["kd_schedule"],
        "kd.mode": o["kd_mode"], "kd.random_init": o["random_init"],
        "data.source": o["source"],
        # In-plane downsampling is an option of the embedded MNI data only: file sources keep their resolution.
        "data.downsample": 1 if o["source"] not in (None, "mni") else None,
        "data.train": o["train_path"], "data.validation": o["validation_path"],
        "data.test": o["test_path"], "data.acceleration": _floats(o["acceleration"]), "data.mask_type": o["mask_type"],
        "data.mask_file": o["mask_file"], "data.image_size": o["image_size"], "data.mask_seed": o["seed"],
        **{f"train.epochs_{stage}": epochs for stage in ("teacher", "student", "kd", "sft")},
        "train.batch_size": o["batch_size"], "train.lr": o["lr"], "train.device": o["device"], "train.amp": o["amp"],
        "train.seed": o["seed"], "train.tensorboard": o["tensorboard"],
        **({"sft.teacher_weight": sft[0], "sft.student_weight": sft[1], "sft.imitation_weight": sft[2]} if sft else {}),
    }


@main.command("models", context_settings=CONTEXT)
@click.argument("names", nargs=-1)
@click.option("--block-form", type=click.Choice(values(BlockForm)), default=BlockForm.PLAIN.value, help="Block form.")
@click.option("--channels", "image_channels", type=click.IntRange(1, 2), default=1,
              help="Image channels: 1 (real, the paper's) or 2 (complex as real and imaginary parts).")
@handles_input_errors
def models_command(names: tuple[str, ...], block_form: str, image_channels: int) -> None:
    """List architectures with their parameter counts (default: the paper's teacher and students)."""
    from tabulate import tabulate

    from compressor.models import ARCHITECTURES, ModelOptions, build_model

    names = names or ("d5c5", "d4c5", "d3c5", "d2c5")
    options = ModelOptions(block_form=block_form, image_channels=image_channels)
    teacher = build_model(names[0], options).num_parameters()
    rows = []
    for name in names:
        model = build_model(name, options)
        params = model.num_parameters()
        rows.append([name, type(model).__name__, model.image_channels, model.n_cascades, params,
                     f"{1 - params / teacher:.2%}", model.distillation_layer(0).split(".", 2)[-1]])
    click.echo(tabulate(rows, headers=["arch", "family", "image channels", "cascades", "parameters",
                                       f"compression vs {names[0]}", "KD layer"], tablefmt="github"))
    click.echo("\nvalid forms: " + "; ".join(ARCHITECTURES.get(f).form for f in ARCHITECTURES))


@main.command("report", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["github", "latex", "csv"]), default="github", help="Table format.")
@click.option("--figures/--no-figures", default=True, help="Also draw the figures.")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation",
              help="Evaluation split (validation picked the weights; test is held out).")
@click.option("--ssim", "ssim_convention", type=click.Choice(["standard", "authors"]), default="standard",
              help="SSIM convention: standard 2-D, or the authors' per-column one (comparable with the paper).")
@handles_input_errors
def report_command(run_dir: Path, fmt: str, figures: bool, split: str, ssim_convention: str) -> None:
    """Rebuild every table and figure of a run directory without retraining."""
    from compressor.evaluate.report import build_report
    from compressor.rundir import RunLayout, refuse_if_training

    refuse_if_training(run_dir)  # a run still training is changing what the report would read
    require_writable(RunLayout(run_dir).report)
    report = build_report(run_dir, fmt=fmt, figures=figures, split=split, ssim_convention=ssim_convention)
    for warning in report.warnings:
        CONSOLE.log(f"warning: {warning}")
    for text in report.tables.values():
        click.echo(text + "\n")
    click.echo(f"{len(report.files)} files written under {RunLayout(run_dir).report} in {report.seconds:.1f} s")


def _register_subcommands() -> None:
    from compressor.cli.benchmark_command import benchmark_command
    from compressor.cli.export_command import export_command
    from compressor.cli.reconstruct_command import reconstruct_command
    from compressor.cli.serve_command import serve_command

    for command in (export_command, reconstruct_command, benchmark_command, serve_command):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":
    sys.exit(main())
