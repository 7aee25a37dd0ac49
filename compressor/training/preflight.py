"""What a run will need, checked before anything trains or is written: :func:`check_run`.

The config's values are checked when it is loaded (:mod:`compressor.config`); this module refuses the
combinations the method cannot run, each as one :class:`~compressor.errors.InputError` line:

* every model of every setup is built (on the CPU: cheap), as the pipeline will build it: the configured teacher
  and students, and with ``sft.feature_ablation`` the feature-domain ``rcnnL`` networks;
* a student needs the teacher's cascade count (SFT and every KD loss pair cascade ``i`` with cascade ``i``) and
  no more parameters than the teacher (it is a compression);
* each KD method is built for each teacher/student pair exactly as the pipeline builds it (mode, channels,
  cascades, schedule's phases), and the layers it taps must exist in both models;
* the data splits of every acceleration are built: the mask fits the image size, the files are readable, and
  every slice is read once (NaN, Inf, an all-zero target: :meth:`~compressor.data.SliceDataset.scan`);
* the batches fit the KD methods (the authors' CC multiplies consecutive batch items: no batch of one, and under
  ``torchrun`` no rank's share of a batch of one: each rank computes the loss on its own items).
"""

from __future__ import annotations

from collections.abc import Callable

from compressor.config import RunConfig
from compressor.data import build_splits, check_coil_options
from compressor.errors import InputError
from compressor.kd import DistillationLoss, build_kd_loss, tap_module_paths
from compressor.models import CascadeModel, build_model
from compressor.training.factories import kd_phases
from compressor.training.stages import model_options, plan_run
from compressor.vocabulary import ImagePhase, KDMode


def check_run(config: RunConfig, log: Callable[[str], None] = print, world_size: int = 1) -> None:
    """Raise :class:`InputError` (one line) for anything in ``config`` the run would fail on after training began.

    Writes nothing: plans the run (:func:`~compressor.training.stages.plan_run`: names, masks, warm-start
    weights), builds its models and KD losses on the CPU, and reads each data slice once. ``world_size``: the
    processes that will train (``torchrun``; ``train.batch_size`` is then the per-rank batch).
    """
    if config.data.phase != ImagePhase.NONE and config.model.image_channels != 2:
        raise InputError(f"[data] phase {config.data.phase!r} makes complex images, which real-valued (1-channel) "
                         "models cannot take: add --channels 2")
    check_coils(config)
    plan = plan_run(config, world_size=world_size)
    options = model_options(config)
    losses = []
    for setup in plan.setups:
        teacher = build_model(setup.teacher, options)
        for student in setup.students:
            losses += [check_pair(config, teacher, build_model(student, options), method) for method in plan.methods]
    for acceleration in config.data.acceleration:
        splits = build_splits(config.data, acceleration, log=log, image_channels=config.model.image_channels)
        for loss in losses:
            check_batches(loss, config.kd.mode, config.train.batch_size, len(splits.train), world_size)


def check_coils(config: RunConfig) -> None:
    """Simulated coils (``[data] coils``) are read to one complex virtual coil of k-space measurements: they need
    2-channel models, and the options of :func:`~compressor.data.check_coil_options`."""
    check_coil_options(config.data)
    if config.data.coils is not None and config.model.image_channels != 2:
        raise InputError(f"[data] coils {config.data.coils} gives a complex virtual-coil image, which real-valued "
                         "(1-channel) models cannot take: add --channels 2")


def check_pair(config: RunConfig, teacher: CascadeModel, student: CascadeModel, method: str) -> DistillationLoss:
    """Check one teacher/student pair and build its KD loss ``method`` as the pipeline's distillation stage does."""
    pair = f"student {student.arch!r} of teacher {teacher.arch!r}"
    if student.n_cascades != teacher.n_cascades:
        raise InputError(f"[model] {pair}: {student.n_cascades} cascades against {teacher.n_cascades}; SFT and "
                         f"KD pair the cascades one to one, so the student needs {teacher.n_cascades}")
    student_size, teacher_size = student.num_parameters(), teacher.num_parameters()
    if student_size > teacher_size:
        raise InputError(f"[model] {pair}: {student_size} parameters, more than the teacher's {teacher_size} "
                         f"(compression {1 - student_size / teacher_size:.1%}); a student must be smaller")
    kd = config.kd
    try:
        loss = build_kd_loss(method, mode=kd.mode, channels=(student.width, teacher.width),
                             n_cascades=teacher.n_cascades)
        kd_phases(loss, kd.schedule, config.train.epochs_kd, kd.feature_epochs)
    except InputError as error:
        raise InputError(f"[kd] method {method!r} for the {pair}: {error}") from None
    for model in (student, teacher):
        layers = dict(model.named_modules())
        missing = [path for path in tap_module_paths(model, loss.required_taps()) if path not in layers]
        if missing:
            raise InputError(f"[kd] method {method!r} ({kd.mode}) taps layer {missing[0]!r}, which {model.arch!r} "
                             "does not have; choose another method or mode")
    return loss


def check_batches(loss: DistillationLoss, mode: str, batch_size: int, train_slices: int, world_size: int = 1
                  ) -> None:
    """The authors' CC multiplies consecutive items of a batch: every training batch needs two or more, on every
    rank (``batch_size`` per rank; the global batches of ``batch_size × world_size`` are split among the ranks,
    the last one's smallest share being ``last // world_size``, see :mod:`compressor.training.distributed`)."""
    if loss.name != "cc" or mode != KDMode.AUTHORS:
        return
    global_batch = batch_size * world_size
    last = train_slices % global_batch or global_batch
    if min(batch_size, train_slices, last // world_size) >= 2:
        return
    if world_size == 1:
        raise InputError(f"[train] batch_size {batch_size} over {train_slices} training slices leaves a batch of "
                         "one, and KD method 'cc' (authors) multiplies consecutive batch items: use batches of 2 "
                         "or more that leave no single slice")
    raise InputError(f"[train] per-rank batch_size {batch_size} × {world_size} processes over {train_slices} "
                     "training slices leaves a rank a batch of one or none, and KD method 'cc' (authors) multiplies "
                     "consecutive batch items: use per-rank batches of 2 or more that leave every rank 2 or more "
                     "of the last batch")
