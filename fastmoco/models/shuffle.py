"""The key shuffles that guard BatchNorm (MoCo's shuffle-BN) and the cross-process gather of keys.

With the key batch shuffled, a key is normalised with other images' BN statistics than its query, so the
statistics cannot tell which key is the positive. In one process ``LocalShuffle`` permutes the batch (with Split-BN
splitting it); under torchrun ``CrossRankShuffle`` permutes the keys of all processes together. Both return the
shuffled batch and an ``undo`` that puts the encoded keys back in order.
"""
import torch
import torch.distributed as dist


class LocalShuffle:
    """One process: permute the key batch before the key encoder so that, with Split-BN, a key is normalised
    with other images' statistics than its query; ``undo`` puts the encoded keys back in order."""

    def __call__(self, x: torch.Tensor):
        perm = torch.randperm(x.shape[0], device=x.device)  # (N,)
        inverse = torch.argsort(perm)
        return x[perm], lambda k: k[inverse]


# all_gather_single is the newer name (the old one warns there); older torch has only all_gather_into_tensor
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@torch.no_grad()
def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """(N, ...) on each of W ranks -> (W*N, ...) on every rank, rank 0's rows first; the identity outside a
    distributed run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    out = keys.new_empty((dist.get_world_size() * keys.shape[0], *keys.shape[1:]))  # (W*N, ...)
    _ALL_GATHER(out, keys.contiguous())
    return out


class CrossRankShuffle:
    """Shuffle-BN across processes (MoCo's BN guard): the key batch of all ranks is gathered, permuted with one
    permutation that rank 0 draws and broadcasts, and each rank encodes its slice, so a key's BN statistics come
    from other images than its query's. ``undo`` gathers the encoded keys and returns this rank's own rows in
    their original order.

    Plugs into ``MoCo.key_shuffle`` (the same interface as the one-process ``LocalShuffle``).
    """

    def __call__(self, x: torch.Tensor):
        rank, world, n = dist.get_rank(), dist.get_world_size(), x.shape[0]
        x_all = gather_keys(x)  # (W*N, C, H, W)
        if rank == 0:
            perm = torch.randperm(world * n, device=x.device)  # (W*N,)
        else:
            perm = torch.empty(world * n, dtype=torch.long, device=x.device)
        dist.broadcast(perm, src=0)
        mine = perm.view(world, n)[rank]  # (N,) rows of x_all this rank encodes
        own_rows = torch.argsort(perm).view(world, n)[rank]  # (N,) where this rank's images sit in the shuffle

        def undo(k: torch.Tensor) -> torch.Tensor:
            return gather_keys(k)[own_rows]  # (N, dim) this rank's keys, original order

        return x_all[mine], undo
