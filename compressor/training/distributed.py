"""Multi-process training (``torchrun --nproc-per-node N -m compressor ...``): the process context, collectives
and the data order of DistributedDataParallel (DDP) training.

One process runs per device. :func:`init_distributed` reads torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and
joins the process group (NCCL on CUDA, device ``cuda:LOCAL_RANK``; gloo on the CPU), with a timeout
(:data:`TIMEOUT_ENV`, default 1800 s) so a dead peer ends a collective with an error instead of a hang. Without
torchrun (or with one process) it returns :data:`SINGLE_PROCESS`, whose collectives do nothing: ``compress``
alone runs exactly the single-process code.

Data order (:func:`rank_batches`): ``train.batch_size`` is the **per-rank** batch ``b`` (as in PyTorch); the
global batch is ``B = b × world``. Each epoch's global batches are exactly the batches one process draws with
``batch_size = B`` (the same DataLoader over the index range, the same generator seeded from ``(seed, epoch)``),
and rank ``r`` takes the ``r``-th contiguous part of each (``np.array_split`` into ``world`` parts). This is what a
``DistributedSampler`` with ``set_epoch`` achieves (a new, shared permutation every epoch, disjoint shares), but it
keeps the single-process order, so 2 ranks with batch ``b`` train the same model as one process with ``2b``.

Uneven last global batch: each rank's loss is scaled by ``n_local × world / n_global``; DDP averages gradients
over ``world``, so the step follows the gradient of the global batch's mean loss (exact for per-item-mean losses:
L1, MSE, AT in the paper's mode). A rank whose share is empty runs a **stand-in** item (the global batch's first)
with weight 0 rather than leaving the step through ``Join``: DDP's join hook would keep its gradients in step but
not its Adam moments, so its later updates would drift from rank 0's. Every rank therefore takes every step.

KD losses that couple the items of a batch act **per rank** (no features are gathered across ranks): each rank's
loss sees its own ``b`` items, and DDP averages the gradients. So with more than one process

* SP (``B × B`` similarity), CC in the paper's mode (``B × B`` RBF correlation) and PKT (``B × B`` conditional
  probabilities) compare only the ``b × b`` blocks on the diagonal of the global matrix: the pairs of items that
  lie on different ranks do not enter the loss, and PKT's rows are normalised over ``b`` items, not ``B``;
* CC in the authors' mode multiplies consecutive items within each rank's share: ``B − world`` products instead
  of ``B − 1`` (the pairs across a share boundary are left out). It needs 2 or more items on every rank:
  :func:`compressor.training.preflight.check_batches` refuses a per-rank batch that leaves a rank one (or none);
* AT in the authors' mode normalises each pixel's activations over the rank's ``b`` items, not the ``B`` items.

These stages therefore train a (slightly) different loss than one process with batch ``B``; with one process
nothing changes. The losses that are means over items (L1, MSE, the SFT teacher's eqs. 3-5, AT in the paper's
mode, FitNets, FSP, NST) give the single-process step of batch ``B``, to float rounding. A gather that keeps
gradients (``torch.distributed.nn.functional.all_gather``) would make the coupled losses see the global batch,
at the price of an all-gather of features per cascade and per step; it is not done.

Failures (:class:`CollectiveError`): a rank that dies, or stops answering for the timeout, makes the other ranks'
next collective fail. With NCCL, and for the store and the rendezvous, torch raises its typed
``torch.distributed.DistError`` (``DistBackendError``, ``DistNetworkError``, ``DistStoreError``); gloo raises a bare
``RuntimeError`` (a dead peer and a timeout alike). Failures are therefore recognised by type and by where they
happen, never by their text: :func:`process_group` turns a ``DistError`` into :class:`CollectiveError`, and every
collective this module makes (:meth:`DistributedContext.barrier`, :meth:`~DistributedContext.all_reduce_sum`, the
start of DDP, DDP's communication before a forward pass and its gradient all-reduce, :class:`WatchedDdp`) turns the
``RuntimeError`` it raises into one. An error of this rank's own computation stays what it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from compressor.errors import InputError
from compressor.rundir import ProcessesRecord

TIMEOUT_ENV = "SFT_KD_RECON_DDP_TIMEOUT"
"""Seconds a collective (a barrier at a stage boundary included) waits for the other ranks; default 1800."""

DEFAULT_TIMEOUT_S = 1800.0
CPU = torch.device("cpu")
REFUSED_ELSEWHERE = "another process of this run refused it (rank 0 says why); nothing was trained"
"""What :meth:`DistributedContext.agree` says on a rank whose step passed while another rank's was refused."""


class CollectiveError(RuntimeError):
    """A collective failed on this rank of a multi-process run: another process died, or did not answer within
    the timeout (:data:`TIMEOUT_ENV`). One line: the rank, what it was doing and the backend's reason (the
    backend's error is ``__cause__``).

    Attributes:
        rank: this process's rank.
        operation: the collective that failed, e.g. ``"barrier"``, ``"gradient all-reduce"``.
        reason: the first sentence of the backend's error.
    """

    def __init__(self, rank: int, operation: str, cause: BaseException):
        self.rank, self.operation, self.reason = rank, operation, _first_sentence(cause)
        super().__init__(f"rank {rank}: training stopped because another process of the run failed or did not "
                         f"answer ({operation}: {self.reason})")


def _first_sentence(error: BaseException) -> str:
    """The first sentence of ``error``'s first line, without the ``[file.cc:123]`` prefix of gloo's messages (for
    the reader only: nothing is recognised by this text)."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().split("\n")[0])
    return text.split(". ")[0][:160] or type(error).__name__


@contextmanager
def _collective(rank: int, operation: str) -> Iterator[None]:
    """The block is one collective (its inputs are built before it): a ``RuntimeError`` it raises is a failed
    collective, raised again as :class:`CollectiveError`."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as error:
        raise CollectiveError(rank, operation, error) from error


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a multi-process run.

    Attributes:
        world_size: number of processes (1: a plain ``compress``).
        rank: this process's global rank; rank 0 alone writes into the run directory.
        local_rank: the rank on this node (picks ``cuda:LOCAL_RANK``).
        device: the device this process trains on.
        backend: ``nccl``, ``gloo`` or ``None`` (one process, no process group).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = CPU
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing with one process); :class:`CollectiveError` if another rank failed."""
        if self.distributed:
            with _collective(self.rank, "barrier"):
                dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """The sums over ranks of ``values`` (float64; the values themselves with one process);
        :class:`CollectiveError` if another rank failed."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        with _collective(self.rank, "all-reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (one collective; ``flag`` itself with one process)."""
        return self.all_reduce_sum([0.0 if flag else 1.0])[0] == 0.0

    def agree(self, step: Callable[[], object] | None) -> None:
        """The handshake of a step that may refuse the run: run ``step`` on this rank (``None``: this rank takes no
        part), then learn from every rank whether its step raised an :class:`~compressor.errors.InputError`.

        This rank's own refusal is raised again; a rank whose step passed while another rank's was refused raises
        ``InputError(`` :data:`REFUSED_ELSEWHERE` ``)``, so that every rank stops at the same step. One collective
        (none with one process).
        """
        error: InputError | None = None
        if step is not None:
            try:
                step()
            except InputError as refused:
                error = refused
        if not self.all_true(error is None) and error is None:
            raise InputError(REFUSED_ELSEWHERE)
        if error is not None:
            raise error

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. a data cache rank 0 fills once)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else CPU

    def describe(self, batch_size: int, lr: float) -> str:
        """The log line of a multi-process run: processes, backend, per-rank and global batch, learning rate."""
        return (f"DDP: {self.world_size} processes ({self.backend}, {self.device.type}), per-rank batch {batch_size}, "
                f"global batch {batch_size * self.world_size}, lr {lr:g} (not scaled)")

    def record(self, batch_size: int, lr: float) -> ProcessesRecord | None:
        """What ``results.json`` states about the processes (``None`` with one process: the file stays as it was)."""
        if not self.distributed:
            return None
        return ProcessesRecord(world_size=self.world_size, backend=str(self.backend), per_rank_batch_size=batch_size,
                               global_batch_size=batch_size * self.world_size, lr=lr)


SINGLE_PROCESS = DistributedContext()
"""A plain ``compress``: every collective is a no-op."""


def init_distributed(device: torch.device) -> DistributedContext:
    """The context of this process: :data:`SINGLE_PROCESS`-like (on ``device``) without torchrun or with one
    process; else joins the process group torchrun describes (NCCL on CUDA, ``cuda:LOCAL_RANK``; gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout, **({"device_id": device} if backend == "nccl" else {}))
    return DistributedContext(world, rank, local_rank, device, backend)


def close_distributed(context: DistributedContext) -> None:
    """Leave the process group :func:`init_distributed` joined (nothing with one process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device) -> Iterator[DistributedContext]:
    """This process's context for the block (:func:`init_distributed`), closed after it. On a multi-process run,
    a ``torch.distributed.DistError`` raised while joining the process group or in the block (NCCL's
    ``DistBackendError``, the store's ``DistStoreError``, ``DistNetworkError``) is raised again as
    :class:`CollectiveError`."""
    try:
        context = init_distributed(device)
    except dist.DistError as error:  # the rendezvous failed (torchrun's store, another rank, the timeout)
        raise CollectiveError(int(os.environ.get("RANK", "0")), "joining the process group", error) from error
    try:
        yield context
    except dist.DistError as error:
        if not context.distributed:
            raise
        raise CollectiveError(context.rank, "a collective", error) from error
    finally:
        close_distributed(context)


class WatchedDdp:
    """``module`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, whose failed steps tell a failed
    collective from an error of this rank's own computation by where it happens (gloo raises both as a bare
    ``RuntimeError``):

    * DDP's start (parameter check and broadcast) is a collective;
    * in :meth:`forward`, what fails before ``module``'s own forward starts is DDP's communication (the one-time
      broadcast of the rebuilt bucket order); what fails inside it is this rank's computation;
    * in :meth:`backward`, the gradient all-reduce runs through a communication hook (DDP's default average, as
      ``torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook``) that records its failure; an
      error with no failed all-reduce is this rank's own.

    A collective's failure is raised as :class:`CollectiveError`; any other error as it is.
    """

    def __init__(self, module: nn.Module, context: DistributedContext, find_unused_parameters: bool):
        self.module, self._rank, self._world_size = module, context.rank, context.world_size
        self._computing = False
        self._reduce_failure: BaseException | None = None
        ids = [context.device.index] if context.device.type == "cuda" else None
        with _collective(context.rank, "start of DistributedDataParallel"):
            self.wrapped = DistributedDataParallel(module, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)
        module.register_forward_pre_hook(lambda *_: self._set_computing(True))
        self.wrapped.register_comm_hook(self, WatchedDdp._allreduce)

    def _set_computing(self, computing: bool) -> None:
        self._computing = computing

    def _allreduce(self, bucket):  # unannotated: DDP refuses this module's (string) annotations
        """DDP's default gradient average of a ``dist.GradBucket`` (``allreduce_hook``: divide by the world size,
        then sum over ranks), as a ``Future[Tensor]``, recording a failure of its all-reduce."""

        def averaged(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            try:
                return done.value()[0]
            except RuntimeError as error:
                self._reduce_failure = error
                raise

        tensor = bucket.buffer().div_(self._world_size)
        try:
            return dist.all_reduce(tensor, async_op=True).get_future().then(averaged)
        except RuntimeError as error:
            self._reduce_failure = error
            raise

    def forward(self, *inputs: object) -> torch.Tensor:
        """The wrapped module's output (DDP's forward pass)."""
        self._computing = False
        try:
            return self.wrapped(*inputs)
        except RuntimeError as error:
            if self._computing or isinstance(error, CollectiveError):
                raise
            raise CollectiveError(self._rank, "DistributedDataParallel's communication before the forward pass",
                                  error) from error

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, the gradients averaged over ranks by DDP."""
        self._reduce_failure = None
        try:
            loss.backward()
        except RuntimeError as error:
            if self._reduce_failure is None:
                raise
            raise CollectiveError(self._rank, "gradient all-reduce", self._reduce_failure) from error


# -- data ----------------------------------------------------------------------------------------------------------
def global_index_batches(size: int, global_batch: int, seed: int, epoch: int, shuffle: bool) -> Iterator[list[int]]:
    """The index batches one process draws from a dataset of ``size`` items with ``batch_size = global_batch``:
    the same DataLoader (over the index range) and generator as :func:`compressor.training.loop.make_loader`."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    for indices in DataLoader(range(size), batch_size=global_batch, shuffle=shuffle, generator=generator,
                              drop_last=False):
        yield indices.tolist()


def rank_share(indices: list[int], world_size: int, rank: int) -> list[int]:
    """Rank ``rank``'s contiguous part of a global batch (``np.array_split``: the first ranks get the extra items)."""
    return [int(i) for i in np.array_split(np.asarray(indices, dtype=np.int64), world_size)[rank]]


@dataclass(frozen=True)
class RankBatch:
    """One rank's part of a global batch: its dataset indices and the weight of its loss,
    ``n_local × world / n_global`` (0 for a stand-in item when the share is empty)."""

    indices: list[int]
    weight: float


def rank_batches(size: int, batch_size: int, context: DistributedContext, seed: int, epoch: int,
                 shuffle: bool = True) -> list[RankBatch]:
    """This rank's batches of an epoch (see the module docstring): one per global batch, never empty."""
    world = context.world_size
    out = []
    for indices in global_index_batches(size, batch_size * world, seed, epoch, shuffle):
        share = rank_share(indices, world, context.rank)
        out.append(RankBatch(share, len(share) * world / len(indices)) if share else RankBatch(indices[:1], 0.0))
    return out


class _Batches(Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def index_loader(dataset: Dataset, batches: list[list[int]], seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader yielding ``dataset``'s items in the given index batches (workers allowed). Its own generator
    keeps the global RNG untouched, as the single-process loader does."""
    return DataLoader(dataset, batch_sampler=_Batches(batches), num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))


def validation_batches(size: int, batch_size: int, context: DistributedContext) -> list[list[int]]:
    """This rank's contiguous part of ``range(size)`` in batches of ``batch_size`` (possibly none)."""
    share = rank_share(list(range(size)), context.world_size, context.rank)
    return [share[i:i + batch_size] for i in range(0, len(share), batch_size)]
