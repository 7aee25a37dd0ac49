"""``compress``: check the run, train its stage graph, deploy what it trained (export, benchmark), report.

:func:`run_pipeline` is the whole flow of one ``compress`` run, under one process or many (``torchrun``): every
rank checks and trains its share; rank 0 alone holds the run lock, writes, logs, exports, benchmarks and reports
(:mod:`compressor.training.distributed`). What it writes for the reader goes through a :class:`Console`: the
summary line and tables to :attr:`Console.echo` (standard output), progress and warnings to :attr:`Console.log`
(standard error).

Nothing trains or is written before the checks pass, in this order, each a handshake every rank agrees on
(:meth:`~compressor.training.distributed.DistributedContext.agree`): the outputs (:func:`check_run_outputs`) and
the configuration (:func:`~compressor.training.preflight.check_run`) on rank 0, then the configuration on the
other ranks, then the run lock. Errors: :class:`~compressor.errors.InputError` (bad input, one line) and
:class:`~compressor.training.distributed.CollectiveError` (another process of the run failed or did not answer).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from compressor.config import RunConfig
from compressor.errors import InputError
from compressor.evaluate.metrics import slice_metrics
from compressor.evaluate.report import build_report
from compressor.export.benchmark import benchmark_run, format_table
from compressor.export.targets.export import export_run
from compressor.export.targets.registry import DEFAULT_TARGET
from compressor.rundir import RunLayout, run_lock
from compressor.training.distributed import DistributedContext, process_group
from compressor.training.pipeline import Pipeline, resolve_device
from compressor.training.preflight import check_run
from compressor.vocabulary import Task
from compressor.workflow.console import SILENT, Console
from compressor.workflow.outputs import require_folder

REPORT_TABLES = ("summary", "table1", "headline", "table8")
"""The report's tables a run prints at its end (plus ``table2`` with the feature ablation, ``warm_start`` with a
warm-started teacher)."""


@dataclass(frozen=True)
class RunRequest:
    """One ``compress`` run.

    Attributes:
        config: the run's configuration (preset, overrides and ``--set`` applied).
        out: the run directory.
        progress: progress bars while training.
        deploy: after training, export every trained model (one validated ONNX file per target) and benchmark.
        targets: the export targets of the deployment (``--precision``'s, e.g. ``("onnx-fp32", "onnx-int8")``).
    """

    config: RunConfig
    out: Path
    progress: bool = True
    deploy: bool = True
    targets: tuple[str, ...] = (DEFAULT_TARGET,)

    @property
    def deploys(self) -> bool:
        """Whether the run exports and benchmarks: asked for, and the task has a scanner graph (super-resolution
        models have no data-fidelity layers)."""
        return self.deploy and self.config.data.task != Task.SR


def run_pipeline(request: RunRequest, console: Console) -> None:
    """Check, train, deploy and report one run (module docstring); under ``torchrun`` on every rank.

    Raises:
        InputError: bad input, before anything trains or is written (the same refusal on every rank).
        CollectiveError: another process of the run died or did not answer (this rank's one line).
    """
    with process_group(resolve_device(request.config.train.device)) as context:
        _run_checked(request, context, console if context.is_main else SILENT)


def check_run_outputs(request: RunRequest) -> None:
    """Refuse, before any work, a run directory the run could not write: ``out`` a file or in a folder that
    cannot be written, or one of the folders (stages, report, exports) a file, or one of the files (config,
    results, benchmark, exports record) a folder."""
    require_folder(request.out, "--out is the run directory, a folder")
    layout = RunLayout(request.out)
    deployed = (layout.exports,) if request.deploys else ()
    for folder in (layout.stages, layout.report, *deployed):
        if folder.exists() and not folder.is_dir():
            raise InputError("is a file, but the run writes a folder of this name; move the file away", folder)
    deployed = (layout.benchmark, layout.benchmark_table, layout.exports_file) if request.deploys else ()
    for file in (layout.config, layout.results, *deployed):
        if file.is_dir():
            raise InputError("is a folder, but the run writes a file of this name; move the folder away", file)


def _run_checked(request: RunRequest, context: DistributedContext, console: Console) -> None:
    started = time.perf_counter()
    main = context.is_main

    def checks() -> None:
        check_run_outputs(request)
        check_run(request.config, log=console.log, world_size=context.world_size)

    # Rank 0 checks first (and fills the embedded data's cache), then the others; a refusal stops every rank.
    context.agree(checks if main else None)
    context.agree(None if main else lambda: check_run(request.config, log=console.log,
                                                       world_size=context.world_size))
    # One compress per run directory: a second one refuses here, before it trains, and the lock covers the export,
    # benchmark and report at the end as well as the training. Under torchrun rank 0 alone takes it.
    with ExitStack() as stack:
        context.agree((lambda: stack.enter_context(run_lock(request.out))) if main else None)
        _train_deploy_report(request, context, console, started)


def _train_deploy_report(request: RunRequest, context: DistributedContext, console: Console,
                         started: float) -> None:
    config, out = request.config, request.out
    pipeline = Pipeline(config, out, score=slice_metrics, log=console.log, progress=request.progress,
                        distributed=context)
    if not context.is_main:  # the other ranks train their shares; rank 0 writes, exports and reports
        pipeline.run()
        return
    console.echo(f"preset {config.preset}, task {config.data.task}: teacher {config.model.teacher}, "
                 f"student {','.join(config.model.student)}, "
                 f"methods {','.join(pipeline.methods)}, {config.data.source} data, "
                 f"accelerations {','.join(f'{a:g}x' for a in config.data.acceleration)}, run directory {out}, "
                 f"device {pipeline.device}")
    result = pipeline.run()
    if request.deploy and not request.deploys:
        console.log("deployment skipped: super-resolution models have no data-fidelity layers, and the scanner "
                    "graph (compress export) takes k-space")
    elif request.deploys:
        deploy_run(out, console, request.targets)
    report = build_report(out, fmt="github")
    for warning in report.warnings:
        console.log(f"warning: {warning}")
    shown = [*REPORT_TABLES, *(["table2"] if config.sft.feature_ablation else []),
             *(["warm_start"] if config.model.init_teacher is not None else [])]
    for name in shown:
        if name in report.tables:
            console.echo("\n" + report.tables[name])
    console.echo("\nNumbers are on the validation split (best-validation-L1 weights); "
                 f"report in {RunLayout(out).report}; total {time.perf_counter() - started:.0f} s "
                 f"(training {result.seconds:.0f} s).")


def deploy_run(out: Path, console: Console, targets: tuple[str, ...] = (DEFAULT_TARGET,)) -> None:
    """Export every trained model of the run ``out`` through each of ``targets`` (one validated file per
    precision), benchmark latency and echo the benchmark table."""
    export_run(out, log=console.log, targets=targets)
    console.echo("\n" + format_table(benchmark_run(out, log=console.log)))
