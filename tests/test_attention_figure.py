"""Fig. 6, the attention-map residue between a distilled student and its teacher, per cascade.

The definition (evaluate/attention.py): at each cascade's distillation layer, crop the hidden maps to the image,
take ``Q = mean_c F_c²``, divide by its L2 norm over the image pixels, and compare ``|Q_student − Q_teacher|``.
Oracles: identical models (zero), a hand-built pair whose maps are known in closed form, and NumPy applied to the
features recorded by hooks. The figure itself is checked on a real smoke run made by ``compress``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.data.dataset import normalise_kspace
from compressor.data.sample import Sample
from compressor.evaluate.attention import (
    attention_residue_panel,
    attention_residues,
    crop_to_image,
    kd_attention_residues,
)
from compressor.evaluate.report import FIGURE_BUILDERS
from compressor.evaluate.run_data import load_run
from compressor.models import FeatureRecorder, ModelOptions, build_model
from compressor.physics import undersample

HEIGHT, WIDTH = 12, 10  # not square, so a crop along the wrong axis shows
PADDING = 2
CHANNELS = 4


def tiny_model(arch: str, seed: int):
    torch.manual_seed(seed)
    options = ModelOptions(block_padding=PADDING, width=CHANNELS)
    return build_model(arch, options).eval()


def phantom_sample(seed: int = 0) -> Sample:
    """A non-negative image undersampled with every other phase-encode line, normalised as the dataset does."""
    image = torch.from_numpy(np.random.default_rng(seed).uniform(0.1, 1.0, (HEIGHT, WIDTH)).astype(np.float32))
    mask = torch.zeros(HEIGHT, WIDTH)
    mask[:, ::2] = 1
    measured = normalise_kspace(undersample(image, mask))
    return Sample(zero_filled=measured.zero_filled[None], kspace=measured.kspace[None], mask=mask[None],
                  target=(image / measured.scale)[None], scale=measured.scale, volume="phantom", slice_index=0)


def numpy_attention(features: torch.Tensor) -> np.ndarray:
    """The definition in NumPy on one recorded ``(1, C, H + 2p, W + 2p)`` map."""
    cropped = features[0].double().numpy()[:, PADDING:-PADDING, PADDING:-PADDING]
    attention = (cropped ** 2).mean(axis=0)
    return attention / np.linalg.norm(attention)


def test_identical_student_and_teacher_leave_no_residue():
    model, sample = tiny_model("d3c2", seed=1), phantom_sample()
    residues = attention_residues(model, model, sample)
    assert len(residues) == 2
    for residue in residues:
        assert residue.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(residue, 0.0)


def test_residue_is_the_numpy_definition_on_the_recorded_distillation_layers():
    student, teacher, sample = tiny_model("d2c2", seed=2), tiny_model("d3c2", seed=3), phantom_sample()
    # The pairing rule: the middle hidden activation, d2 → relu1, d3 → relu2.
    student_paths = [f"cascades.{i}.block.relu1" for i in range(2)]
    teacher_paths = [f"cascades.{i}.block.relu2" for i in range(2)]
    inputs = (sample.zero_filled[None], sample.kspace[None], sample.mask[None])
    with torch.no_grad(), FeatureRecorder(student, student_paths) as s, FeatureRecorder(teacher, teacher_paths) as t:
        student(*inputs)
        teacher(*inputs)
    expected = [np.abs(numpy_attention(s.features[sp]) - numpy_attention(t.features[tp]))
                for sp, tp in zip(student_paths, teacher_paths)]
    residues = attention_residues(student, teacher, sample)
    for residue, oracle in zip(residues, expected):
        # The model computes in float32; map values are ~0.1, so 1e-6 is float32 rounding, not slack.
        np.testing.assert_allclose(residue, oracle, rtol=0, atol=1e-6)
    assert all(residue.max() > 0 for residue in residues)


def test_a_hand_built_pair_gives_the_closed_form_residue():
    """Student: conv1 copies the (non-negative) input into every channel, so ``Q ∝ x²``. Teacher: conv1 is zero with
    bias 1, so its map is constant, ``1/√(HW)`` over the image after cropping and normalising (the padding ring,
    which normalising before cropping would count, would make it ``1/√((H+2p)(W+2p))``)."""
    student, teacher = tiny_model("d2c1", seed=4), tiny_model("d2c1", seed=5)
    with torch.no_grad():
        copy = student.cascades[0].block.conv1
        copy.weight.zero_()
        copy.weight[:, 0, 1, 1] = 1.0
        copy.bias.zero_()
        constant = teacher.cascades[0].block.conv1
        constant.weight.zero_()
        constant.bias.fill_(1.0)
    sample = phantom_sample(seed=6)
    image = sample.zero_filled[0].double().numpy()
    assert image.min() >= 0  # every other line of a positive image: the zero-filled image stays non-negative
    squared = image ** 2
    expected = np.abs(squared / np.linalg.norm(squared) - 1 / np.sqrt(HEIGHT * WIDTH))
    (residue,) = attention_residues(student, teacher, sample)
    np.testing.assert_allclose(residue, expected, rtol=1e-5, atol=1e-9)


def test_crop_drops_the_padding_top_left_and_the_odd_remainder_bottom_right():
    # A DC-UNet map of an odd padded size is one row taller: (H + 2p + 1) × (W + 2p).
    features = torch.arange((HEIGHT + 2 * PADDING + 1) * (WIDTH + 2 * PADDING)).reshape(
        1, 1, HEIGHT + 2 * PADDING + 1, WIDTH + 2 * PADDING)
    cropped = crop_to_image(features, HEIGHT, WIDTH)
    assert cropped.shape == (1, 1, HEIGHT, WIDTH)
    assert cropped[0, 0, 0, 0] == features[0, 0, PADDING, PADDING]
    assert cropped[0, 0, -1, -1] == features[0, 0, PADDING + HEIGHT - 1, PADDING + WIDTH - 1]
    with pytest.raises(ValueError, match="smaller than"):
        crop_to_image(features[..., ::2, ::2], HEIGHT, WIDTH)


def test_student_and_teacher_with_different_cascade_counts_cannot_be_paired():
    with pytest.raises(ValueError, match="2 cascades, teacher 1"):
        attention_residues(tiny_model("d2c2", seed=0), tiny_model("d3c1", seed=0), phantom_sample())


# --- the figure on a real run directory ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory):
    """``compress --preset smoke`` once for the module; the data cache stays set while its tests run."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(cache))
        result = CliRunner().invoke(main, ["--preset", "smoke", "--no-deploy", "--no-progress", "--out", str(run_dir)])
        assert result.exit_code == 0, result.output
        yield run_dir


def test_compress_writes_the_figure_into_the_report(smoke_run: Path):
    assert "fig6_attention_residue" in FIGURE_BUILDERS
    figure = smoke_run / "report" / "fig6_attention_residue.png"
    content = figure.read_bytes()
    assert content.startswith(b"\x89PNG") and len(content) > 1000


def test_residues_pair_each_distilled_student_with_the_teacher_it_learnt_from(smoke_run: Path):
    data = kd_attention_residues(load_run(smoke_run))
    assert (data.method, data.acceleration) == ("at", 4.0)
    assert [(row.role, row.student, row.teacher) for row in data.rows] == [
        ("std_kd", "std_kd/at/d3c5@4x", "teacher/d5c5@4x"),
        ("sft_kd", "sft_kd/at/d3c5@4x", "sft_teacher/d5c5+d3c5@4x")]
    for row in data.rows:
        assert len(row.residues) == 5 and all(residue.shape == (48, 48) for residue in row.residues)
        # Non-negative unit-norm maps over 48² pixels: ‖R‖₂ ≤ √2, so 0 < mean residue ≤ √2 / 48.
        assert all(0 < mean <= np.sqrt(2) / 48 for mean in row.means)


def copy_run(run_dir: Path, destination: Path) -> Path:
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("report", "exports"))
    return destination


def test_a_missing_sft_kd_record_is_a_note_not_a_crash(smoke_run: Path, tmp_path: Path):
    run_dir = copy_run(smoke_run, tmp_path / "run")
    results = json.loads((run_dir / "results.json").read_text())
    results["models"] = [m for m in results["models"] if m["role"] != "sft_kd"]
    (run_dir / "results.json").write_text(json.dumps(results))
    outcome = attention_residue_panel(load_run(run_dir), tmp_path / "fig6.png")
    assert outcome.path is None and not (tmp_path / "fig6.png").exists()
    assert outcome.note == "attention residue figure skipped: no sft_kd record for at at 4x"


def test_a_deleted_teacher_stage_is_a_note_naming_it(smoke_run: Path, tmp_path: Path):
    run_dir = copy_run(smoke_run, tmp_path / "run")
    (teacher_stage,) = (run_dir / "stages").glob("teacher-*")
    shutil.rmtree(teacher_stage)
    outcome = attention_residue_panel(load_run(run_dir), tmp_path / "fig6.png")
    assert outcome.path is None
    assert "teacher/d5c5@4x has no stage.json" in outcome.note


def test_an_unfinished_stage_is_a_note(smoke_run: Path, tmp_path: Path):
    run_dir = copy_run(smoke_run, tmp_path / "run")
    (stage,) = (run_dir / "stages").glob("sft_teacher-*")
    info = json.loads((stage / "stage.json").read_text())
    (stage / "stage.json").write_text(json.dumps({**info, "complete": False}))
    outcome = attention_residue_panel(load_run(run_dir), tmp_path / "fig6.png")
    assert "did not finish training" in outcome.note
