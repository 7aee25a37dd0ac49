"""The CLI's bad-input matrix (issue 11, sections 2 and 5): every bad input is refused before anything trains.

Each case asserts exit code 2, exactly one line of output (``Error: ...`` naming the key or file, the value and
what is valid), no traceback, and that nothing was written: no run directory, no output file. No case trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.config import load_config
from compressor.data import build_splits, write_project_volume

SIZE = 16
"""Image size of the project-layout files written here (``--image-size 16``)."""


@pytest.fixture(scope="module", autouse=True)
def _mni_cache() -> None:
    """Build the embedded data's cache once, so that no case logs building it."""
    build_splits(load_config("smoke").data, 4.0, log=lambda message: None)


def project_volume(path: Path, slices: int = 3, kspace: bool = False) -> Path:
    rng = np.random.default_rng(len(path.name))
    target = rng.random((slices, SIZE, SIZE), dtype=np.float32) + 0.1
    full = np.fft.fft2(target, norm="ortho") if kspace else None
    return write_project_volume(path, target, kspace=full)


def spoil(path: Path, key: str, slice_index: int, value: float) -> Path:
    """Set one pixel (``value`` NaN/Inf) or, with ``value = 0``, a whole slice of ``key`` in a written file."""
    with h5py.File(path, "r+") as file:
        if value == 0:
            file[key][slice_index] = 0
        else:
            data = file[key][slice_index]
            data[1, 2] = value
            file[key][slice_index] = data
    return path


def fastmri_volume(path: Path, kspace_shape: tuple[int, ...], reconstruction_slices: int | None = None,
                   nan_slice: int | None = None) -> Path:
    """A fastMRI-like file: complex centred ``kspace`` of ``kspace_shape`` (its readout 2 x SIZE rows), and a
    ``reconstruction_esc`` of ``reconstruction_slices`` slices when given; NaN in one k-space slice if asked."""
    rng = np.random.default_rng(len(path.name))
    kspace = (rng.standard_normal(kspace_shape) + 1j * rng.standard_normal(kspace_shape)).astype(np.complex64)
    if nan_slice is not None:
        kspace[nan_slice, ..., 1, 2] = np.nan
    with h5py.File(path, "w") as file:
        file["kspace"] = kspace
        if reconstruction_slices is not None:
            file["reconstruction_esc"] = rng.random((reconstruction_slices, SIZE, SIZE), dtype=np.float32) + 0.1
    return path


def data_files(folder: Path) -> dict[str, Path]:
    """Named inputs the cases refer to as ``{name}``."""
    folder.mkdir()
    files = {name: project_volume(folder / f"{name}.h5") for name in ("train", "validation")}
    files["train_nan"] = spoil(project_volume(folder / "train_nan.h5"), "target", 1, np.nan)
    files["validation_inf"] = spoil(project_volume(folder / "validation_inf.h5"), "target", 2, np.inf)
    files["train_kspace_nan"] = spoil(project_volume(folder / "train_kspace_nan.h5", kspace=True), "kspace", 0,
                                      np.nan)
    files["validation_kspace"] = project_volume(folder / "validation_kspace.h5", kspace=True)
    files["train_zero"] = spoil(project_volume(folder / "train_zero.h5"), "target", 2, 0)
    files["validation_zero"] = spoil(project_volume(folder / "validation_zero.h5"), "target", 0, 0)
    files["fastmri_counts"] = fastmri_volume(folder / "fastmri_counts.h5", (3, 2 * SIZE, SIZE), 2)
    files["fastmri_multicoil"] = fastmri_volume(folder / "fastmri_multicoil.h5", (2, 4, 2 * SIZE, SIZE))
    files["fastmri_nan"] = fastmri_volume(folder / "fastmri_nan.h5", (2, 2 * SIZE, SIZE), nan_slice=1)
    files["fastmri"] = fastmri_volume(folder / "fastmri.h5", (2, 2 * SIZE, SIZE))
    files["complex_target"] = write_project_volume(folder / "complex_target.h5", np.full((2, SIZE, SIZE), 1 + 1j))
    files["mask40"] = folder / "mask40.npy"
    np.save(files["mask40"], np.ones((40, 40), np.float32))
    files["a_file"] = folder / "a_file"
    files["a_file"].write_text("not a folder")
    files["missing"] = folder / "missing.npy"
    return files


PROJECT = ["--data", "project", "--image-size", str(SIZE)]
FASTMRI = ["--data", "fastmri", "--image-size", str(SIZE)]

COMPRESS_CASES = {
    # -- values, checked when the config is loaded -------------------------------------------------------------
    "image-size 0": (["--image-size", "0"], "[data] image_size must be >= 8, got 0"),
    "image-size 1": (["--image-size", "1"], "[data] image_size must be >= 8, got 1"),
    "image-size -8": (["--image-size", "-8"], "[data] image_size must be >= 8, got -8"),
    "batch-size 0": (["--batch-size", "0"], "[train] batch_size must be >= 1, got 0"),
    "epochs 0": (["--epochs", "0"], "[train] epochs_teacher must be >= 1, got 0"),
    "acceleration 1": (["--acceleration", "1"], "[data] acceleration must be > 1, got 1.0"),
    "acceleration 0.5": (["--acceleration", "4,0.5"], "[data] acceleration must be > 1, got 0.5"),
    "lr -1": (["--lr", "-1"], "[train] lr must be >= 0, got -1.0"),
    "lr nan": (["--lr", "nan"], "[train] lr must be a finite number, got nan"),
    "kd-schedule option": (["--kd-schedule", "twophase"], "'twophase' is not one of 'joint', 'two-phase'"),
    "kd-mode option": (["--kd-mode", "code"], "'code' is not one of 'paper', 'authors'"),
    "task option": (["--task", "denoise"], "'denoise' is not one of 'reconstruction', 'sr'"),
    "mask-type option": (["--mask-type", "poisson"], "'poisson' is not one of 'equispaced', 'random'"),
    "block-form option": (["--block-form", "dense"], "'dense' is not one of 'plain', 'residual'"),
    "epochs not a number": (["--epochs", "x"], "Invalid value for '--epochs'"),
    "method": (["--method", "kd"],
               "[kd] method: unknown KD method 'kd'; valid: at, cc, fitnets, fsp, ft, nst, pkt, sp, all"),
    "teacher": (["--teacher", "d1c5"], "[model] teacher: invalid architecture 'd1c5'"),
    "student": (["--student", "x3c5"], "[model] student: invalid architecture 'x3c5'"),
    "data source": (["--data", "dicom"],
                    "[data] source: unknown data source 'dicom'; valid: mni, authors, fastmri, nifti, project"),
    "device": (["--device", "tpu"], "[train] device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
    "sft weights": (["--sft-weights", "1,1"], "--sft-weights: expected three weights w_T,w_S,w_I"),
    "set kd.schedule": (["--set", "kd.schedule=twophase"], "[kd] schedule: unknown KD schedule 'twophase'; "
                                                           "valid: joint, two-phase"),
    "set kd.mode": (["--set", "kd.mode=code"], "[kd] mode: unknown KD mode 'code'; valid: paper, authors"),
    "set data.task": (["--set", "data.task=denoise"], "[data] task: unknown task 'denoise'; valid: reconstruction, sr"),
    "set sr_interpolation": (["--set", "data.sr_interpolation=nearest"],
                             "[data] sr_interpolation: unknown SR interpolation 'nearest'; valid: bicubic, sinc"),
    "set mask_type": (["--set", "data.mask_type=poisson"],
                      "[data] mask_type: unknown mask type 'poisson'; valid: equispaced, random"),
    "set block_form": (["--set", "model.block_form=dense"],
                       "[model] block_form: unknown block form 'dense'; valid: plain, residual"),
    "set fastmri_target_key": (["--set", "data.fastmri_target_key=recon"],
                               "[data] fastmri_target_key: unknown fastMRI target key 'recon'; valid: "
                               "reconstruction_esc, reconstruction_rss"),
    "set device": (["--set", "train.device=cuda0"], "unknown device 'cuda0'"),
    "set student list": (["--set", "model.student=[]"], "[model] student must name at least one value"),
    "set lr_step": (["--set", "train.lr_step=0"], "[train] lr_step must be >= 1, got 0"),
    "set lr_gamma": (["--set", "train.lr_gamma=0"], "[train] lr_gamma must be > 0, got 0.0"),
    "set center_fraction": (["--set", "data.center_fraction=1.5"], "[data] center_fraction must be > 0 and <= 1"),
    "set imitation_weight": (["--set", "sft.imitation_weight=-1"], "[sft] imitation_weight must be >= 0, got -1.0"),
    "set kd.weight": (["--set", "kd.weight=-1"], "[kd] weight must be >= 0, got -1.0"),
    "set feature_epochs": (["--set", "kd.feature_epochs=0"], "[kd] feature_epochs must be >= 1, got 0"),
    "set max_train_slices": (["--set", "data.max_train_slices=0"], "[data] max_train_slices must be >= 1, got 0"),
    "set downsample": (["--set", "data.downsample=0"], "[data] downsample must be >= 1, got 0"),
    "set block_padding": (["--set", "model.block_padding=-1"], "[model] block_padding must be >= 0, got -1"),
    "set num_workers": (["--set", "train.num_workers=-1"], "[train] num_workers must be >= 0, got -1"),
    "set threads": (["--set", "train.threads=0"], "[train] threads must be >= 1, got 0"),
    # -- combinations the method cannot run, refused before the first stage -------------------------------------
    "cascade mismatch": (["--teacher", "d3c5", "--student", "d2c5,d3c4"],
                         "[model] student 'd3c4' of teacher 'd3c5': 4 cascades against 5"),
    "cascade mismatch, feature setup": (["--feature-sft", "--student", "d3c4"], "4 cascades against 5"),
    "cascade mismatch, sr": (["--task", "sr", "--student", "d3c5"],
                             "[model] student 'd3c5' of teacher 'vdsr12': 5 cascades against 4"),
    "student larger than teacher": (["--teacher", "d3c5", "--student", "d5c5"],
                                    "more than the teacher's 49285 (compression -187.6%)"),
    "method without the mode": (["--method", "pkt", "--kd-mode", "authors"],
                                "KD method 'pkt' has no 'authors' variant; its modes: paper"),
    "cc authors, batch of one": (["--method", "cc", "--kd-mode", "authors", "--batch-size", "1"],
                                 "[train] batch_size 1 over 8 training slices leaves a batch of one"),
    "cc authors, last batch of one": (["--method", "cc", "--kd-mode", "authors", "--batch-size", "7"],
                                      "[train] batch_size 7 over 8 training slices leaves a batch of one"),
    "mask of another size": (["--mask", "{mask40}"], "mask40.npy: mask shape (40, 40) does not fit images of shape "
                                                     "(48, 48)"),
    "mask file missing": (["--mask", "{missing}"], "missing.npy: mask file not found"),
    "sr scale not an integer": (["--task", "sr", "--acceleration", "2.5"], "must be an integer, got 2.5"),
    "sr scale not dividing": (["--task", "sr", "--acceleration", "5"], "does not divide the image size 48x48"),
    "init-teacher missing": (["--init-teacher", "{missing}"], "missing.npy: no such weights file"),
    # -- data, read once before the teacher stage ---------------------------------------------------------------
    "NaN in a training file": ([*PROJECT, "--train", "{train_nan}", "--validation", "{validation}"],
                               "train_nan.h5 [target]: slice 1 contains NaN or Inf"),
    "Inf in a validation file": ([*PROJECT, "--train", "{train}", "--validation", "{validation_inf}"],
                                 "validation_inf.h5 [target]: slice 2 contains NaN or Inf"),
    "NaN in training k-space": ([*PROJECT, "--train", "{train_kspace_nan}", "--validation", "{validation_kspace}"],
                                "train_kspace_nan.h5 [kspace]: slice 0 contains NaN or Inf"),
    "all-zero training target": ([*PROJECT, "--train", "{train_zero}", "--validation", "{validation}"],
                                 "train_zero.h5: slice 2: the target image is all zero"),
    "all-zero validation target": ([*PROJECT, "--train", "{train}", "--validation", "{validation_zero}"],
                                   "validation_zero.h5: slice 0: the target image is all zero"),
    "data file missing": ([*PROJECT, "--train", "{missing}", "--validation", "{validation}"],
                          "missing.npy: no such file or folder"),
    # -- data with phase (2 image channels) ----------------------------------------------------------------------
    "channels 3": (["--channels", "3"], "Invalid value for '--channels': 3 is not in the range 1<=x<=2"),
    "phase option": (["--phase", "random"], "'random' is not one of 'none', 'synthetic'"),
    "synthetic phase, real models": (["--phase", "synthetic"],
                                     "[data] phase 'synthetic' makes complex images, which real-valued"),
    "synthetic phase on measured k-space": ([*PROJECT, "--channels", "2", "--phase", "synthetic", "--train",
                                             "{validation_kspace}", "--validation", "{validation_kspace}"],
                                            "validation_kspace.h5: stores k-space, which carries its own phase"),
    "2 channels, a real-valued family": (["--channels", "2", "--teacher", "dcunet5"],
                                         "dcunet5 takes real images only (1 image channel)"),
    "complex target, real models": ([*PROJECT, "--train", "{complex_target}", "--validation", "{validation}"],
                                    "complex_target.h5 [target]: complex image (dtype complex64): a complex "
                                    "target needs the 2-channel models (compress --channels 2)"),
    "multi-coil, real models": ([*FASTMRI, "--train", "{fastmri_multicoil}", "--validation", "{fastmri}"],
                                "fastmri_multicoil.h5 [kspace]: multi-coil k-space (S, coils, H, W) and no "
                                "reconstruction_esc/reconstruction_rss target: multi-coil k-space is used by the "
                                "2-channel models (compress --channels 2)"),
    "fastMRI slice counts differ": ([*FASTMRI, "--channels", "2", "--train", "{fastmri_counts}", "--validation",
                                     "{fastmri}"], "fastmri_counts.h5: 'reconstruction_esc' has 2 slices but "
                                                   "'kspace' has 3"),
    "NaN in measured k-space": ([*FASTMRI, "--channels", "2", "--train", "{fastmri}", "--validation",
                                 "{fastmri_nan}"], "fastmri_nan.h5 [kspace]: slice 1 contains NaN or Inf"),
    # -- simulated coils -----------------------------------------------------------------------------------------
    "coils 0": (["--coils", "0"], "Invalid value for '--coils': 0 is not in the range 1<=x<=64"),
    "coils, real models": (["--coils", "4"], "[data] coils 4 gives a complex virtual-coil image, which real-valued "
                                             "(1-channel) models cannot take: add --channels 2"),
    "snr without coils": (["--channels", "2", "--snr", "10"], "[data] snr 10.0 describes simulated coils, which "
                                                              "this run has none of: set [data] coils"),
    "coils, super-resolution": (["--task", "sr", "--coils", "4"], "[data] coils simulates multi-coil k-space "
                                                                  "measurements, which the super-resolution task"),
    "coils on measured multi-coil k-space": ([*FASTMRI, "--channels", "2", "--coils", "4", "--train",
                                              "{fastmri_multicoil}", "--validation", "{fastmri}"],
                                             "fastmri_multicoil.h5: stores k-space measured with its own coils: "
                                             "--coils 4 simulates coils for magnitude images"),
    # -- the run directory ------------------------------------------------------------------------------------
    "out on a read-only file system": (["--out", "/proc/sft-kd-recon/run"],
                                       "cannot write /proc/sft-kd-recon/run: the folder /proc is not writable"),
    "out below a file": (["--out", "{a_file}/run"], "a_file is a file, not a folder"),
}


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("args, expected", COMPRESS_CASES.values(), ids=COMPRESS_CASES.keys())
def test_compress_refuses_bad_input_before_anything_is_written(tmp_path, args, expected):
    files = {name: str(path) for name, path in data_files(tmp_path / "inputs").items()}
    before = files_under(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--preset", "smoke", "--out", str(out), "--no-progress", "--no-deploy",
                                       *[arg.format(**files) for arg in args]])
    assert expected in one_line_error(result)
    assert not out.exists()
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("args, expected", [
    (["models", "--block-form", "dense"], "'dense' is not one of 'plain', 'residual'"),
    (["models", "d1c5"], "invalid architecture 'd1c5'"),
    (["report"], "Missing argument 'RUN_DIR'"),
])
def test_subcommand_usage_errors_are_one_line(args, expected):
    assert expected in one_line_error(CliRunner().invoke(main, args))


@pytest.mark.parametrize("command", ["export", "reconstruct"])
@pytest.mark.parametrize("where", ["read-only", "below a file"])
def test_export_and_reconstruct_refuse_an_unwritable_out(tmp_path, command, where):
    (tmp_path / "a_file").write_text("not a folder")
    out = Path("/proc/sft-kd-recon/out") if where == "read-only" else tmp_path / "a_file" / "out"
    args = {"export": ["export", "--arch", "d3c5", "--weights", str(tmp_path / "w.safetensors"),
                       "--out", str(out / "model.onnx")],
            "reconstruct": ["reconstruct", str(tmp_path / "model.onnx"), str(tmp_path / "k.npy"),
                            "--out", str(out / "scan.h5")]}[command]
    before = files_under(tmp_path)
    line = one_line_error(CliRunner().invoke(main, args))
    assert f"cannot write {out}" in line
    assert files_under(tmp_path) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
@pytest.mark.parametrize("command", ["compress", "export", "reconstruct"])
def test_out_in_a_read_only_folder_is_refused(tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        args = {"compress": ["--preset", "smoke", "--out", str(locked / "run")],
                "export": ["export", "--arch", "d3c5", "--weights", str(tmp_path / "w.safetensors"), "--out",
                           str(locked / "model.onnx")],
                "reconstruct": ["reconstruct", str(tmp_path / "model.onnx"), str(tmp_path / "k.npy"), "--out",
                                str(locked / "scan.h5")]}[command]
        line = one_line_error(CliRunner().invoke(main, args))
        assert f"the folder {locked} is not writable" in line
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


# -- every output path of a run, checked before anything trains ------------------------------------------------------
@pytest.mark.parametrize("where, kind, expected", [
    ("", "file", "Invalid value for '--out': Directory '{path}' is a file."),  # click's own check
    ("report", "file", "{path}: is a file, but the run writes a folder of this name; move the file away"),
    ("stages", "file", "{path}: is a file, but the run writes a folder of this name; move the file away"),
    ("exports", "file", "{path}: is a file, but the run writes a folder of this name; move the file away"),
    ("results.json", "folder", "{path}: is a folder, but the run writes a file of this name; move the folder away"),
    ("benchmark.json", "folder", "{path}: is a folder, but the run writes a file of this name; move the folder away"),
])
def test_compress_refuses_a_run_directory_it_could_not_write_before_training(tmp_path, where, kind, expected):
    run = tmp_path / "run"
    path = run / where if where else run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if kind == "folder" else path.write_text("somebody's file")
    before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path)}
    result = CliRunner().invoke(main, ["--preset", "smoke", "--out", str(run), "--no-progress"])
    assert one_line_error(result) == "Error: " + expected.format(path=path)
    assert {p: p.stat().st_mtime_ns for p in files_under(tmp_path)} == before


def test_a_run_without_deployment_does_not_need_the_deployment_paths(tmp_path):
    from compressor.workflow.run import RunRequest, check_run_outputs

    run = tmp_path / "run"
    (run / "exports").parent.mkdir()
    (run / "exports").write_text("not the exports folder")
    (run / "benchmark.json").mkdir()
    check_run_outputs(RunRequest(load_config("smoke"), run, deploy=False))
    sr = load_config("smoke")
    sr.data.task = "sr"  # super-resolution runs deploy nothing
    check_run_outputs(RunRequest(sr, run, deploy=True))


@pytest.mark.parametrize("args, expected", [
    (["--json", "{folder}"], "Invalid value for '--json': File '{folder}' is a directory."),  # click's own check
    (["--json", "{a_file}/b.json"], "cannot write {a_file}/b.json: {a_file} is a file, not a folder"),
    (["--json", "{csv_folder_json}"], "{csv_folder}: is a folder; the CSV beside --json is written here"),
    (["--run", "{run}"], "{run}/benchmark.json: is a folder; the run's benchmark record is written here"),
])
def test_benchmark_refuses_an_output_it_could_not_write_before_timing(tmp_path, args, expected):
    names = {"folder": tmp_path / "out", "a_file": tmp_path / "a_file", "csv_folder": tmp_path / "t.csv",
             "csv_folder_json": tmp_path / "t.json", "run": tmp_path / "run"}
    names["folder"].mkdir()
    names["a_file"].write_text("not a folder")
    names["csv_folder"].mkdir()
    (names["run"] / "benchmark.json").mkdir(parents=True)
    before = files_under(tmp_path)
    line = one_line_error(CliRunner().invoke(main, ["benchmark", *[a.format(**names) for a in args]]))
    assert line == "Error: " + expected.format(**names)
    assert files_under(tmp_path) == before


def test_benchmark_refuses_a_run_another_process_is_training_in(tmp_path):
    from tests.test_run_directory import another_process_holding_the_lock

    run = tmp_path / "run"
    run.mkdir()
    with another_process_holding_the_lock(run) as holder:
        line = one_line_error(CliRunner().invoke(main, ["benchmark", "--run", str(run)]))
    assert str(run) in line and f"PID {holder.pid}" in line and "still changing" in line
    assert not (run / "benchmark.json").exists()
