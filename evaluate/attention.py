"""Fig. 6: the residue between a distilled student's attention maps and its teacher's, cascade by cascade.

Definition (what :func:`attention_residues` returns and the figure shows), for one slice and cascade ``i``:

1. ``F_i``: the activation at ``model.distillation_layer(i)`` (the hidden layer AT pairs across teacher and
   student), recorded with :class:`~compressor.models.features.FeatureRecorder`, ``(1, C, H', W')``.
2. Crop to the image: a padded block's hidden maps include its zero padding (DC-CNN: ``H' = H + 2p`` with
   ``p = block_padding``; DC-UNet: one more row/column when ``H + 2p`` is odd). The ``H × W`` window starting at
   ``((H' − H) // 2, (W' − W) // 2)`` is kept, i.e. ``p`` pixels are dropped on the top/left, whatever is left
   over on the bottom/right; for the feature-chain models (rcnn, VDSR), which do not pad, nothing is dropped.
   The offset comes from the map's shape rather than ``model.options.block_padding`` because those models
   record the option without applying it.
3. Attention map ``Q_i = mean_c F_{i,c}²`` (AT's ``F²_mean``, :func:`compressor.kd.at.spatial_attention`),
   divided by its L2 norm over the ``H·W`` image pixels (:func:`compressor.kd.at.normalise_per_sample`).
4. Residue ``R_i = |Q_i(student) − Q_i(teacher)|``, ``(H, W)``.

Cropping before normalising makes the compared maps unit vectors over exactly the pixels shown; the AT loss
normalises over the padded map, which differs only by the padding ring's share of the energy. Summing over
channels (the authors' ``Σ_c A_c²``) instead of averaging changes nothing after normalisation. Both maps are
non-negative unit vectors, so ``‖R_i‖₂ ≤ √2`` and ``mean R_i`` lies in ``[0, √(2 / (H·W))]``, comparable across models
and cascades: it is the number behind the paper's claim (SFT-KD-Recon's residue is the smaller one).

Rows of the figure: Std-KD (student from the ``std_kd`` stage, teacher from the ``teacher`` stage it distilled) and
SFT-KD-Recon (``sft_kd`` against its ``sft_teacher``), for the run's first KD method and first student architecture at
its first acceleration. Each student's teacher is the stage its ``stage.json`` names as parent. The slice is the one
Fig. 3 shows (:func:`compressor.evaluate.figures.panel_slice`), else the first validation slice; its k-space is rebuilt
from the run's ``config.json``, since the stored reconstructions do not keep it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure

from compressor.data import build_splits
from compressor.data.sample import Sample
from compressor.evaluate.figures import FigureOutcome, default_method, panel_slice, save_figure
from compressor.evaluate.run_data import ModelRecord, RunData
from compressor.evaluate.table_text import method_label
from compressor.kd.at import normalise_per_sample, spatial_attention
from compressor.models import CascadeModel, FeatureRecorder
from compressor.rundir import CONFIG_FILE, ROLE_LABELS, STAGE_FILE, RunLayout, read_config, read_stage
from compressor.training.checkpoint import LoadedStage, load_stage_model

TEACHER_OF = {"std_kd": "teacher", "sft_kd": "sft_teacher"}
"""The figure's rows: each distilled student's role and the role of the teacher it is compared with."""


class ResiduesUnavailableError(Exception):
    """Why a run's residues cannot be computed (a stage or file is missing); the report shows it as a note."""


class ResidueRow(NamedTuple):
    """One row of Fig. 6: a distilled student against its teacher, one ``(H, W)`` residue per cascade."""

    role: str
    student: str
    teacher: str
    residues: list[np.ndarray]

    @property
    def means(self) -> list[float]:
        """Mean residue per cascade (the numbers printed in the panel titles)."""
        return [float(residue.mean()) for residue in self.residues]


class DistillationPair(NamedTuple):
    """A distilled student (``role``) and the teacher stage it learnt from, records and loaded models."""

    role: str
    student_record: ModelRecord
    teacher_record: ModelRecord
    student: LoadedStage
    teacher: LoadedStage


class AttentionResidues(NamedTuple):
    """Fig. 6's data: the rows, and which method, acceleration and validation slice they were computed on."""

    method: str
    acceleration: float
    volume: str
    slice_index: int
    rows: list[ResidueRow]


def crop_to_image(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``height × width`` window of ``(B, C, H', W')`` hidden maps that covers the image (see module docstring).

    Raises:
        ValueError: the maps are smaller than the image (a layer at reduced resolution).
    """
    padded_height, padded_width = features.shape[-2:]
    if padded_height < height or padded_width < width:
        raise ValueError(f"hidden maps of {padded_height}×{padded_width} are smaller than the {height}×{width} image")
    top, left = (padded_height - height) // 2, (padded_width - width) // 2
    return features[..., top:top + height, left:left + width]


def normalised_attention(features: torch.Tensor) -> torch.Tensor:
    """AT's attention map ``mean_c F_c²`` of ``(B, C, H, W)`` features, L2-normalised per sample: ``(B, H, W)``."""
    attention = spatial_attention(features, p=2.0)
    return normalise_per_sample(attention).reshape(attention.shape)


def _batch_of_one(sample: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(zero_filled (1, 1, H, W), kspace (1, 1, H, W, 2), mask (1, 1, H, W))`` from one dataset item."""
    return sample.zero_filled[None], sample.kspace[None], sample.mask[None]


@torch.no_grad()
def attention_maps(model: CascadeModel, sample: Sample) -> list[np.ndarray]:
    """One normalised attention map ``(H, W)`` float64 per cascade of ``model`` on ``sample`` (module docstring)."""
    model.eval()
    paths = [model.distillation_layer(i) for i in range(model.n_cascades)]
    zero_filled, kspace, mask = _batch_of_one(sample)
    height, width = zero_filled.shape[-2:]
    with FeatureRecorder(model, paths) as recorder:
        model(zero_filled, kspace, mask)
    return [normalised_attention(crop_to_image(recorder.features[path].float(), height, width))[0].double().numpy()
            for path in paths]


def attention_residues(student: CascadeModel, teacher: CascadeModel, sample: Sample) -> list[np.ndarray]:
    """``|Q_i(student) − Q_i(teacher)|`` for every cascade ``i`` on one slice: ``(H, W)`` float64 each.

    Args:
        student, teacher: models with the same number of cascades (CPU, any architecture with hidden layers).
        sample: one dataset item (:class:`~compressor.data.sample.Sample`), normalised as in training.

    Raises:
        ValueError: the cascade counts differ, or a paired layer is smaller than the image.
    """
    if student.n_cascades != teacher.n_cascades:
        raise ValueError(f"student has {student.n_cascades} cascades, teacher {teacher.n_cascades}: "
                         "no cascade-by-cascade pairing")
    return [np.abs(s - t) for s, t in zip(attention_maps(student, sample), attention_maps(teacher, sample))]


def validation_sample(run_dir: Path, acceleration: float, slice_key: tuple[str, int] | None = None,
                      mask_digest: str | None = None) -> Sample:
    """The validation slice ``slice_key = (volume, slice_index)`` (default: the first), rebuilt from ``config.json``.

    Raises:
        ResiduesUnavailableError: no ``config.json``; its data give another mask than ``mask_digest`` (the stage's);
            the slice is not in its validation split.
        InputError: a malformed ``config.json`` or data that cannot be read.
    """
    path = RunLayout(Path(run_dir)).config
    if not path.is_file():
        raise ResiduesUnavailableError(f"no {CONFIG_FILE} to rebuild the validation input from")
    config = read_config(run_dir)
    splits = build_splits(config.data, acceleration, log=lambda _message: None,
                          image_channels=config.model.image_channels)
    if mask_digest is not None and splits.mask.digest() != mask_digest:
        raise ResiduesUnavailableError(f"{path}'s data give mask {splits.mask.digest()}, the stages were trained "
                                       f"with {mask_digest}")
    dataset = splits.validation
    if slice_key is None:
        return dataset[0]
    for index, (reader_index, slice_index) in enumerate(dataset.slices):
        if (dataset.readers[reader_index].name, slice_index) == tuple(slice_key):
            return dataset[index]
    raise ResiduesUnavailableError(f"validation slice {slice_key[0]} #{slice_key[1]} is not in the split that "
                                   f"{path} describes")


def _load_complete_stage(record: ModelRecord) -> LoadedStage:
    """The record's trained model. A missing or unfinished stage raises :class:`ResiduesUnavailableError`, a
    corrupt one :class:`~compressor.errors.InputError`."""
    stage_file = record.stage_dir / STAGE_FILE if record.stage_dir is not None else None
    if stage_file is None or not stage_file.is_file():
        raise ResiduesUnavailableError(f"{record.name} has no {STAGE_FILE} ({record.stage_dir})")
    if not read_stage(record.stage_dir).complete:
        raise ResiduesUnavailableError(f"{record.name} did not finish training ({stage_file} says complete=false)")
    loaded = load_stage_model(record.stage_dir)
    model = loaded.model
    if not all(model.hidden_layers(i) for i in range(model.n_cascades)):
        raise ResiduesUnavailableError(f"{record.name} ({model.arch}) has no hidden layer to take attention maps from")
    return loaded


def _teacher_record(run: RunData, student: LoadedStage, teacher_role: str, acceleration: float) -> ModelRecord:
    """The ``teacher_role`` record whose stage key is the student's ``parents.teacher`` in its ``stage.json``."""
    key = student.record.parents.get("teacher")
    for record in run.records:
        if (record.role == teacher_role and record.acceleration == acceleration and record.stage_dir is not None
                and record.stage_dir.name.endswith(f"-{key}")):
            return record
    raise ResiduesUnavailableError(f"{student.record.name}'s teacher stage (key {key}) is not a "
                                   f"{teacher_role} record of results.json")


def kd_attention_residues(run: RunData, method: str | None = None, acceleration: float | None = None,
                          slice_key: tuple[str, int] | None = None) -> AttentionResidues:
    """Std-KD and SFT-KD-Recon residues against their teachers (module docstring), ready to draw.

    Args:
        run: the run directory's data.
        method: KD method (default: the run's first); acceleration: default the run's first.
        slice_key: ``(volume, slice_index)`` of the validation slice (default: the one Fig. 3 shows, else the
            first validation slice).

    Raises:
        ResiduesUnavailableError: a stage, record or input needed is missing (the message says which).
        InputError: a file that is there is malformed.
    """
    method = default_method(run, method)
    accelerations = run.accelerations()
    if method is None or not accelerations:
        raise ResiduesUnavailableError("no KD stages in results.json")
    acceleration = accelerations[0] if acceleration is None else acceleration
    arch = run.primary_student
    students = {role: run.find(role, acceleration, method=method, arch=arch) for role in TEACHER_OF}
    missing = [role for role, record in students.items() if record is None]
    if missing:
        raise ResiduesUnavailableError(f"no {' or '.join(missing)} record for {method} at {acceleration:g}x")
    pairs = []
    for role, record in students.items():
        student = _load_complete_stage(record)
        teacher_record = _teacher_record(run, student, TEACHER_OF[role], acceleration)
        pairs.append(DistillationPair(role, record, teacher_record, student, _load_complete_stage(teacher_record)))
    slice_key = slice_key if slice_key is not None else panel_slice(run, acceleration, method)
    sample = validation_sample(run.run_dir, acceleration, slice_key, pairs[0].student.record.mask_digest)
    rows = []
    for pair in pairs:
        try:
            residues = attention_residues(pair.student.model, pair.teacher.model, sample)
        except ValueError as error:
            raise ResiduesUnavailableError(f"{pair.student_record.name} against {pair.teacher_record.name}: "
                                           f"{error}") from None
        rows.append(ResidueRow(pair.role, pair.student_record.name, pair.teacher_record.name, residues))
    return AttentionResidues(method, acceleration, sample.volume, sample.slice_index, rows)


def _draw(data: AttentionResidues) -> Figure:
    """One row per :class:`ResidueRow`, one column per cascade, one colour scale (and colour bar) per row."""
    n_cascades = max(len(row.residues) for row in data.rows)
    figure = Figure(figsize=(2.2 * n_cascades + 1.0, 2.4 * len(data.rows) + 0.4), layout="constrained")
    grid = figure.subplots(len(data.rows), n_cascades, squeeze=False)
    for axes_row, row in zip(grid, data.rows):
        top = max(float(residue.max()) for residue in row.residues) or 1.0
        for cascade, (axes, residue, mean) in enumerate(zip(axes_row, row.residues, row.means), start=1):
            image = axes.imshow(residue, cmap="inferno", vmin=0.0, vmax=top, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"cascade {cascade}\nmean {mean:.2e}", fontsize=8)
        axes_row[0].set_ylabel(f"{ROLE_LABELS[row.role]}\nvs {ROLE_LABELS[TEACHER_OF[row.role]]}", fontsize=9)
        figure.colorbar(image, ax=list(axes_row), shrink=0.8)
    figure.suptitle(f"|A(student) − A(teacher)|, A = mean_c F² / ‖·‖₂ at the distillation layer; "
                    f"{method_label(data.method)}, {data.acceleration:g}x, {data.volume} slice {data.slice_index}",
                    fontsize=9)
    return figure


def attention_residue_panel(run: RunData, out_path: Path, method: str | None = None) -> FigureOutcome:
    """Fig. 6: per-cascade attention-map residues of Std-KD (row 1) and SFT-KD-Recon (row 2) against their
    teachers, each panel titled with its mean residue. A missing stage or input gives a note instead."""
    try:
        data = kd_attention_residues(run, method)
    except ResiduesUnavailableError as reason:
        return FigureOutcome(None, f"attention residue figure skipped: {reason}")
    return save_figure(_draw(data), out_path)

