"""Multi-process training (DDP, gloo, 2 CPU processes on 127.0.0.1): the same weights as one process with the
global batch, rank 0 alone writes, the stage cache and resume work, CC's per-rank batch check. Seconds each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.utils.data import Subset

from compressor import rundir
from compressor.config import load_config
from compressor.data import build_splits
from compressor.errors import InputError
from compressor.evaluate.metrics import slice_metrics
from compressor.io import load_json
from compressor.kd import build_kd_loss
from compressor.models import build_model
from compressor.training import loop
from compressor.training.distributed import DistributedContext, WatchedDdp, rank_batches
from compressor.training.factories import kd_phases
from compressor.training.loop import TrainSettings, train_stage
from compressor.training.objectives import Distillation, Supervised, TrainingPhase
from compressor.training.preflight import check_batches
from compressor.training.stages import model_options
from compressor.training.watch import EVENT_FILE_PATTERN, StageWatch

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="needs torch.distributed with gloo")

WORLD = 2
TIMEOUT_S = 120
TRAIN_SLICES = 7  # per-rank batch 3, global 6: batches of 6 and 1, so rank 1 has no item in the last one
PER_RANK_BATCH = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A data cache shared by this module's processes (filled once here, before any of them starts)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(folder))
        build_splits(load_config("smoke").data, 4.0, log=lambda _: None)
        yield folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- one stage, in process: 2 gloo ranks against one process ---------------------------------------------------------
def _train(kind: str, batch_size: int, context: DistributedContext, stage_dir: Path, epochs: int = 2) -> None:
    """Train the supervised (``d3c5``) or AT paper-mode distillation stage (``d3c5`` from a random ``d5c5``) of the
    smoke data's first :data:`TRAIN_SLICES` slices into ``stage_dir``."""
    config = load_config("smoke")
    splits = build_splits(config.data, 4.0, log=lambda _: None)
    options = model_options(config)
    torch.manual_seed(0)
    student = build_model("d3c5", options)
    if kind == "supervised":
        objective, phases = Supervised(student), [TrainingPhase("train", epochs)]
    else:
        torch.manual_seed(1)
        teacher = build_model("d5c5", options)
        loss = build_kd_loss("at", mode="paper", channels=(student.width, teacher.width), n_cascades=5)
        objective, phases = Distillation(student, teacher, loss, 1000.0), kd_phases(loss, "joint", epochs)
    settings = TrainSettings(batch_size=batch_size, lr=1e-3, lr_step=40, lr_gamma=0.1, seed=0,
                             device=torch.device("cpu"), progress=False, distributed=context)
    # Every rank computes its share of the validation metrics; rank 0's watch alone has a folder.
    watch = StageWatch(stage_dir / rundir.TENSORBOARD_FOLDER if context.is_main else None, slice_metrics,
                       {"kind": kind})
    train_stage(objective, phases, Subset(splits.train, range(TRAIN_SLICES)), splits.validation, settings,
                stage_dir, kind, log=lambda _: None, watch=watch)


def _no_write(*args, **kwargs):
    raise AssertionError("a rank other than 0 wrote into the run directory")


def _worker(rank: int, port: int, out: str, cache_dir: str) -> None:
    os.environ["SFT_KD_RECON_CACHE"] = cache_dir
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        context = DistributedContext(WORLD, rank, rank, torch.device("cpu"), "gloo")
        if rank:
            loop.save_weights = loop.save_state = loop.save_json = _no_write
        for kind in ("supervised", "at"):
            _train(kind, PER_RANK_BATCH, context, Path(out) / kind)
        # An interrupted run: its checkpoint after epoch 1 of 2, then the same command again (resumes).
        _train("supervised", PER_RANK_BATCH, context, Path(out) / "resumed", epochs=1)
        _train("supervised", PER_RANK_BATCH, context, Path(out) / "resumed", epochs=2)
    finally:
        dist.destroy_process_group()


def spawn(out: Path, cache_dir: Path) -> None:
    processes = mp.start_processes(_worker, args=(free_port(), str(out), str(cache_dir)), nprocs=WORLD, join=False,
                                   start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not processes.join(timeout=1):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail(f"{WORLD} ranks did not finish within {TIMEOUT_S} s")


def differences(a: Path, b: Path) -> torch.Tensor:
    """Absolute differences of every weight of two safetensors files with the same keys."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return torch.cat([(x[k] - y[k]).abs().flatten() for k in x])


def max_difference(a: Path, b: Path) -> float:
    return differences(a, b).max().item()


@pytest.fixture(scope="module")
def stages(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The stages trained by 2 ranks (per-rank batch 3) and by one process (batch 6)."""
    ranks, single = tmp_path_factory.mktemp("ranks"), tmp_path_factory.mktemp("single")
    spawn(ranks, cache)
    for kind in ("supervised", "at"):
        _train(kind, PER_RANK_BATCH * WORLD, DistributedContext(), single / kind)
    return ranks, single


def test_rank_batches_are_the_single_process_batches_split():
    size, b = 7, 3
    shares = [rank_batches(size, b, DistributedContext(WORLD, rank, backend="gloo"), seed=0, epoch=5)
              for rank in range(WORLD)]
    single = list(loop.make_loader(range(size), TrainSettings(b * WORLD, 1e-3, None, 0.1, 0, torch.device("cpu")),
                                   shuffle=True, epoch=5))
    assert len(shares[0]) == len(shares[1]) == len(single) == 2
    for index, batch in enumerate(single):
        assert shares[0][index].indices + (shares[1][index].indices if shares[1][index].weight else []) \
            == batch.tolist()
    assert [s.weight for s in shares[0]] == [1.0, 2.0] and [s.weight for s in shares[1]] == [1.0, 0.0]


def test_cc_authors_needs_two_items_on_every_rank():
    cc = build_kd_loss("cc", mode="authors", channels=(32, 32), n_cascades=5)
    check_batches(cc, "authors", batch_size=2, train_slices=8, world_size=2)  # global batches 4, 4: shares 2, 2
    check_batches(cc, "authors", batch_size=3, train_slices=6, world_size=1)
    for batch_size, slices in ((3, 8), (1, 8), (4, 10)):  # last global batch 2 (shares 1, 1), per-rank 1, last 2
        with pytest.raises(InputError, match="per-rank batch_size"):
            check_batches(cc, "authors", batch_size=batch_size, train_slices=slices, world_size=2)
    check_batches(build_kd_loss("cc", mode="paper", channels=(32, 32), n_cascades=5), "paper", 1, 8, world_size=2)


@pytest.mark.parametrize("kind", ["supervised", "at"])
def test_two_ranks_train_the_weights_of_one_process_with_the_global_batch(stages, kind):
    ranks, single = stages
    # Float noise only: the batch mean is summed in another order, and Adam's steps (≈ lr·sign(g) while its
    # moments are young) turn the rounding of near-zero gradients into a fraction of lr in a few weights. Measured
    # (4 steps, lr 1e-3): max 5.9e-5, mean 4.9e-8 (supervised); max 1.1e-5, mean 2.8e-9 (AT). Another data order
    # moves every weight by about lr per step.
    for weights in ("last.safetensors", "best.safetensors"):
        difference = differences(ranks / kind / weights, single / kind / weights)
        assert difference.max().item() < 5e-4 and difference.mean().item() < 1e-6
    two, one = load_json(ranks / kind / "history.json"), load_json(single / kind / "history.json")
    assert [h["val_loss"] for h in two] == pytest.approx([h["val_loss"] for h in one], rel=1e-5)
    assert [h["train_loss"] for h in two] == pytest.approx([h["train_loss"] for h in one], rel=1e-4)
    assert sorted(p.name for p in (ranks / kind).iterdir()) == sorted(p.name for p in (single / kind).iterdir())
    # TensorBoard: one event file (rank 0's), and the validation PSNR/SSIM of every rank's slices, not rank 0's
    assert len(list((ranks / kind / rundir.TENSORBOARD_FOLDER).glob(EVENT_FILE_PATTERN))) == 1
    two, one = (validation_scalars(run / kind) for run in (ranks, single))
    assert two.keys() == one.keys() == {"validation/l1", "validation/psnr", "validation/ssim"}
    for tag, values in two.items():
        assert [step for step, _ in values] == [1, 2]
        assert [v for _, v in values] == pytest.approx([v for _, v in one[tag]], rel=1e-5), tag


def validation_scalars(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(stage_dir / rundir.TENSORBOARD_FOLDER))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if tag.startswith("validation/")}


def test_resume_after_an_interrupted_epoch_equals_the_uninterrupted_run(stages):
    ranks, _ = stages
    for weights in ("last.safetensors", "best.safetensors"):
        assert max_difference(ranks / "resumed" / weights, ranks / "supervised" / weights) == 0.0
    assert load_json(ranks / "resumed" / "history.json")[1]["val_loss"] == \
        load_json(ranks / "supervised" / "history.json")[1]["val_loss"]


# -- the command: torchrun -m compressor ---------------------------------------------------------------------------
def torchrun(out: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", "-m", "compressor", "--preset", "smoke", "--no-deploy",
               "--no-progress", "--out", str(out), *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFT_KD_RECON_DDP_TIMEOUT": str(TIMEOUT_S)}
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)


def files(run: Path) -> list[str]:
    """The run's files, stage keys left out (the key of a 2-process stage differs by design), and TensorBoard event
    files by their pattern (their names hold the time, host and process id)."""
    names = []
    for path in filter(Path.is_file, run.rglob("*")):
        parts = list(path.relative_to(run).parts)
        if parts[0] == rundir.STAGES_FOLDER:
            parts[1] = parts[1].rsplit("-", 1)[0]
        if path.match(EVENT_FILE_PATTERN):
            parts[-1] = EVENT_FILE_PATTERN
        names.append("/".join(parts))
    return sorted(names)


@pytest.fixture(scope="module")
def runs(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The smoke run of one process (batch 4) and of 2 ranks (per-rank batch 2), and the 2 ranks' log."""
    single, ranks = tmp_path_factory.mktemp("run1") / "run", tmp_path_factory.mktemp("run2") / "run"
    from compressor.cli import main

    result = CliRunner().invoke(main, ["--preset", "smoke", "--no-deploy", "--no-progress", "--out", str(single)])
    assert result.exit_code == 0, result.output
    launched = torchrun(ranks, "--batch-size", "2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    return single, ranks, launched.stdout + launched.stderr


def test_ranks_write_what_one_process_writes_and_record_the_global_batch(runs):
    single, ranks, log = runs
    assert files(ranks) == files(single)  # rank 0's TensorBoard events alone: one file per stage
    assert files(ranks).count(f"stages/teacher-d5c5/{rundir.TENSORBOARD_FOLDER}/{EVENT_FILE_PATTERN}") == 1
    assert log.count("DDP: 2 processes (gloo, cpu), per-rank batch 2, global batch 4, lr 0.001 (not scaled)") == 1
    assert rundir.read_results(ranks).distributed == rundir.ProcessesRecord(
        world_size=2, backend="gloo", per_rank_batch_size=2, global_batch_size=4, lr=0.001)
    assert load_json(ranks / "results.json")["distributed"] == {
        "world_size": 2, "backend": "gloo", "per_rank_batch_size": 2, "global_batch_size": 4, "lr": 0.001}
    assert rundir.read_results(single).distributed is None
    assert "distributed" not in load_json(single / "results.json")
    for stage in (ranks / "stages").iterdir():
        assert rundir.read_stage(stage).config["world_size"] == 2
    for stage in (single / "stages").iterdir():
        assert "world_size" not in rundir.read_stage(stage).config
    teacher = [next((run / "stages").glob("teacher-*")) / "best.safetensors" for run in (single, ranks)]
    assert max_difference(*teacher) < 1e-4


def test_a_second_launch_reuses_every_stage(runs):
    _, ranks, _ = runs
    checkpoints = {p: p.stat().st_mtime_ns for p in ranks.rglob("checkpoint.pt")}
    launched = torchrun(ranks, "--batch-size", "2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stderr.count("reusing ") == len(checkpoints) == 5
    assert {p: p.stat().st_mtime_ns for p in ranks.rglob("checkpoint.pt")} == checkpoints


def test_cc_with_a_per_rank_batch_of_one_is_refused_before_training(cache, tmp_path):
    launched = torchrun(tmp_path / "run", "--method", "cc", "--kd-mode", "authors", "--batch-size", "1")
    assert launched.returncode != 0
    errors = [line for line in launched.stderr.splitlines() if line.startswith("Error: ")]
    refusal = [line for line in errors if "per-rank batch_size 1 × 2 processes" in line]
    assert len(refusal) == 1 and "'cc' (authors)" in refusal[0]  # rank 0; rank 1 says that another rank refused
    assert set(errors) - set(refusal) <= {"Error: another process of this run refused it (rank 0 says why); "
                                          "nothing was trained"}
    assert not (tmp_path / "run").exists()


def test_python_m_compressor_is_compress():
    shown = subprocess.run([sys.executable, "-m", "compressor", "--help"], capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    assert shown.returncode == 0 and shown.stdout.startswith("Usage: compress [OPTIONS]")


def test_records_of_another_world_size_are_replaced_not_merged():
    model = rundir.ModelResult(name="teacher/d5c5@4x", role=rundir.Role.TEACHER, acceleration=4.0, split="validation")
    one = rundir.RunRecord(teacher="d5c5", models=(model,))
    processes = rundir.ProcessesRecord(world_size=2, backend="gloo", per_rank_batch_size=2, global_batch_size=4,
                                       lr=1e-3)
    two = rundir.RunRecord(teacher="d5c5", models=(), distributed=processes)
    merged, note = rundir.merge_results(one, {"preset": "smoke"}, two, {"preset": "smoke"})
    assert merged.models == () and "number of training processes" in note
    assert rundir.merge_results(one, {"preset": "smoke"}, one, {"preset": "smoke"})[1] is None


# -- failures: recognised by type and by where they happen, never by their text ------------------------------------
FAILURE_TIMEOUT_S = 4
"""The collective timeout of the failure cases: a rank that stops answering is given up on after this."""


def _failing_worker(rank: int, port: int, case: str, peer: str, out: str) -> None:
    """Rank 1 leaves (``peer``: ``die`` exits, ``hang`` stops answering) just before ``case``'s collective; rank 0
    (or, for ``own error``, rank 0 failing on its own) writes what it raised to ``out/rank<r>.txt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=FAILURE_TIMEOUT_S))
    context = DistributedContext(WORLD, rank, rank, torch.device("cpu"), "gloo")

    def leave(step: str) -> None:
        if rank == 1 and case == step:
            if peer == "die":
                os._exit(3)
            time.sleep(6 * FAILURE_TIMEOUT_S)
            os._exit(0)

    try:
        torch.manual_seed(0)
        leave("start of DistributedDataParallel")
        ddp = WatchedDdp(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()), context, False)
        x = torch.randn(2, 1, 8, 8)
        for step in range(3):  # DDP broadcasts its rebuilt bucket order before the second step's forward pass
            leave({1: "DistributedDataParallel's communication before the forward pass",
                   2: "gradient all-reduce"}.get(step, ""))
            if rank == 0 and case == "own error" and step == 2:
                x = torch.randn(2, 3, 8, 8)  # this rank's own mistake: the wrong number of channels
            ddp.backward(ddp.forward(x).square().mean())
        leave("barrier")
        context.barrier()
        leave("all-reduce")
        context.all_reduce_sum([1.0])
        outcome = "no error"
    except Exception as error:  # the type is what the test checks
        cause = type(error.__cause__).__name__ if error.__cause__ is not None else None
        outcome = f"{type(error).__name__}|{cause}|{getattr(error, 'operation', '')}|{error}"
    Path(out, f"rank{rank}.txt").write_text(outcome)
    os._exit(0)


def _run_failing(tmp_path: Path, case: str, peer: str) -> dict[int, str]:
    processes = mp.start_processes(_failing_worker, args=(free_port(), case, peer, str(tmp_path)), nprocs=WORLD,
                                   join=False, start_method="spawn")
    # Rank 0 reports; rank 1 gets the time to report its own error (own-error case), and hanging it is killed.
    for process, wait_s in zip(processes.processes, (TIMEOUT_S, 2 * FAILURE_TIMEOUT_S)):
        process.join(wait_s)
        if process.is_alive():
            process.kill()
            process.join()
    return {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in range(WORLD)
            if (tmp_path / f"rank{rank}.txt").exists()}


@pytest.mark.parametrize("case, peer", [
    ("start of DistributedDataParallel", "die"),
    ("DistributedDataParallel's communication before the forward pass", "die"),
    ("gradient all-reduce", "die"),
    ("gradient all-reduce", "hang"),
    ("barrier", "die"),
    ("all-reduce", "hang"),
])
def test_a_peer_that_died_or_stopped_answering_is_a_collective_error_naming_the_rank(tmp_path, case, peer):
    # What torch 2.13's gloo raises here is a bare RuntimeError ("Connection closed by peer", "Timed out waiting"):
    # the handshake knows it by the call that raised it, and keeps the backend's error as the cause.
    outcome = _run_failing(tmp_path, case, peer)[0]
    kind, cause, operation, message = outcome.split("|", 3)
    assert (kind, cause, operation) == ("CollectiveError", "RuntimeError", case), outcome
    assert message.startswith("rank 0: training stopped because another process of the run failed or did not "
                              f"answer ({case}: ")
    assert "\n" not in message and "[/" not in message  # one line, without gloo's source-file prefix


def test_an_error_of_this_ranks_own_computation_stays_what_it_is(tmp_path):
    outcomes = _run_failing(tmp_path, "own error", "")
    kind, cause, operation, message = outcomes[0].split("|", 3)
    assert (kind, cause, operation) == ("RuntimeError", "None", "") and "channels" in message
    assert outcomes[1].split("|")[:3] == ["CollectiveError", "RuntimeError", "gradient all-reduce"]  # its peer


def test_a_typed_dist_error_of_a_multi_process_run_is_a_collective_error(monkeypatch):
    from compressor.training import distributed

    monkeypatch.setattr(distributed, "init_distributed",
                        lambda device: DistributedContext(WORLD, 1, 1, device, "nccl"))
    with pytest.raises(distributed.CollectiveError) as raised, distributed.process_group(torch.device("cpu")):
        raise dist.DistBackendError("[nccl.cpp:1] NCCL communicator was aborted on rank 1. More text")
    assert str(raised.value) == ("rank 1: training stopped because another process of the run failed or did not "
                                 "answer (a collective: NCCL communicator was aborted on rank 1)")
    assert isinstance(raised.value.__cause__, dist.DistBackendError)

    def rendezvous_failed(device):
        raise dist.DistNetworkError("The client socket has timed out after 60s while trying to connect")

    monkeypatch.setattr(distributed, "init_distributed", rendezvous_failed)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(distributed.CollectiveError) as raised, distributed.process_group(torch.device("cpu")):
        pass
    assert (raised.value.rank, raised.value.operation) == (1, "joining the process group")


def test_one_process_passes_dist_errors_and_bugs_through():
    from compressor.training import distributed

    with pytest.raises(dist.DistStoreError), distributed.process_group(torch.device("cpu")) as context:
        assert not context.distributed
        raise dist.DistStoreError("no store")
    with pytest.raises(ZeroDivisionError), distributed.process_group(torch.device("cpu")):
        _ = 1 / 0


def test_the_handshake_raises_this_ranks_refusal_and_passes_a_step_that_passed():
    def refuse() -> None:
        raise InputError("bad value", "f.toml", "data")

    with pytest.raises(InputError, match=r"^f.toml \[data\]: bad value$"):
        DistributedContext().agree(refuse)
    DistributedContext().agree(lambda: None)
    DistributedContext().agree(None)


def test_a_rank_whose_step_passed_stops_when_another_refused(monkeypatch):
    from compressor.training import distributed

    context = DistributedContext(WORLD, 1, 1, torch.device("cpu"), "gloo")
    monkeypatch.setattr(DistributedContext, "all_true", lambda self, flag: False)  # rank 0 refused
    with pytest.raises(InputError) as refused:
        context.agree(lambda: None)
    assert str(refused.value) == distributed.REFUSED_ELSEWHERE == (
        "another process of this run refused it (rank 0 says why); nothing was trained")
