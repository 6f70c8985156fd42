"""Several processes as torchrun would start them (gloo on CPU), for the tests that need a process group."""
import os


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_env(rank: int, world: int, port: int):
    """The environment torchrun gives process ``rank`` of ``world`` (call first thing in a spawned worker)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def spawn(fn, *args, world=2) -> dict:
    """``fn(rank, world, port, results, *args)`` in ``world`` fresh processes; returns what they put in
    ``results`` (a shared dict)."""
    port = free_port()
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(fn, args=(world, port, results, *args), nprocs=world)
        return dict(results)
