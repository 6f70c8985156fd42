"""The process group (torchrun / torch.distributed): joining it, one device per process, and the collectives
every command uses to decide together.

``fastmoco-train`` under ``torchrun --nproc_per_node=N`` reads RANK, WORLD_SIZE and LOCAL_RANK from the
environment, joins the group (NCCL on CUDA, gloo on CPU) and takes one device per process (cuda:LOCAL_RANK).
Without those variables it is one process and every helper here is the identity.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastmoco.errors import CheckpointError, ConfigError

# What ``together`` hands from rank to rank: the errors the CLI prints as one line (ConfigError and DataError are
# ValueErrors). Anything else is a bug and keeps its traceback.
AGREED_ERRORS = (ValueError, CheckpointError, OSError)


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any_of(self, flags: list[bool]) -> list[bool]:
        """Each flag true on every rank when it is true on any rank (one all-reduce for all of them)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """A 0-d bool device tensor, true when it is true on every rank (an all-reduce on the device: no host
        sync)."""
        if not self.distributed:
            return flag
        t = flag.to(torch.int32).reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t[0].bool()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    @torch.no_grad()
    def average_buffers(self, buffers: list) -> None:
        """Float buffers (BN running statistics) set to their mean over the ranks, in one all-reduce, so every
        rank holds the same encoders (each rank's BN saw only its own slice of the batch)."""
        if not (self.distributed and buffers):
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])  # (total,)
        dist.all_reduce(flat)
        flat /= self.world
        for b, v in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(v.view_as(b))

    def all_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def sum_grads(self, params) -> None:
        """Gradients summed over the ranks (a small model trained on sharded batches, without DDP)."""
        if not self.distributed:
            return
        for p in params:
            dist.all_reduce(p.grad)

    def together(self, fn, main_only: bool = False):
        """``fn()`` on every rank (rank 0 alone with ``main_only``), then one exchange of the outcome: if it raised
        one of ``AGREED_ERRORS`` anywhere, every rank raises the lowest failing rank's error, so all processes stop
        with the same line instead of the others failing later inside a collective. Returns ``fn()``'s result
        (rank 0's, broadcast, with ``main_only``). ``fn`` must not run collectives of its own."""
        result = error = None
        try:
            if self.is_main or not main_only:
                result = fn()
        except AGREED_ERRORS as exc:
            if not self.distributed:
                raise
            error = exc
        if not self.distributed:
            return result
        outcomes = self.all_objects((error, result if main_only and self.is_main else None))
        for rank, (exc, _) in enumerate(outcomes):
            if exc is not None:
                if rank and isinstance(exc, (ValueError, CheckpointError)) and not str(exc).startswith("rank "):
                    exc = type(exc)(f"rank {rank}: {exc}")
                raise exc
        return outcomes[0][1] if main_only else result

    def agree_on(self, values: dict, what: str) -> None:
        """Every rank holds the same ``values``, or every rank raises one ConfigError naming the first that
        differs (two launchers started with other settings would otherwise hang or fail deep inside a
        collective)."""
        if not self.distributed:
            return
        every = self.all_objects(values)
        for name in every[0]:
            for rank, theirs in enumerate(every):
                if theirs.get(name) != every[0][name]:
                    raise ConfigError(f"the processes disagree on {what}: {name} is {every[0][name]!r} on rank 0 but "
                                      f"{theirs.get(name)!r} on rank {rank}; start every process with the same "
                                      "settings")

    def broadcast_object(self, obj):
        """rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; choose auto, cpu, cuda or cuda:N")
    return dev


def setup(device: str = "auto", timeout_min: float = 30.0) -> ProcessGroup:
    """Join the process group torchrun describes in the environment (or stay one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_min)
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts: without a per-attempt prefix a restarted rank can
            # read the address its dead predecessor published and fail to connect (seen with gloo, 2 of 3 restarts)
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=False, timeout=timeout)
            kwargs.update(store=dist.PrefixStore(f"fastmoco/attempt_{restart}", store), rank=rank, world_size=world)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout, **kwargs)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return ProcessGroup(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
