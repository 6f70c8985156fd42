"""Pure-PyTorch references of the ops, written the way the original MoCo code does it.

They define the semantics the fused ops are tested against and serve as the `--ops reference` path.
"""
import torch
import torch.nn.functional as F


def infonce_reference(q, k, queue, temperature: float = 0.07, reduction: str = "mean"):
    """einsum + cat + cross_entropy: materialises the (N, 1+K) logits."""
    pos = torch.einsum("nc,nc->n", q, k).unsqueeze(1)  # (N, 1)
    neg = torch.einsum("nc,kc->nk", q, queue.detach())  # (N, K)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (N, 1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels, reduction=reduction)


def infonce_inbatch_reference(q, keys, offset: int = 0, temperature: float = 1.0, reduction: str = "mean"):
    """The MoCo v3 code's contrastive loss: the (N, M) logits, labels arange(N) + offset."""
    logits = q @ keys.detach().T / temperature  # (N, M)
    labels = torch.arange(q.shape[0], device=q.device) + offset  # (N,)
    return F.cross_entropy(logits, labels, reduction=reduction)


@torch.no_grad()
def ema_reference_(dst, src, momentum: float) -> None:
    """The per-parameter loop of the original code."""
    for d, s in zip(dst, src):
        d.mul_(momentum).add_(s, alpha=1.0 - momentum)


@torch.no_grad()
def enqueue_reference_(queue, ptr, keys) -> None:
    """Ring-buffer write without a host sync: rows go to (ptr + i) % K; N > K keeps the last K keys."""
    K, N = queue.shape[0], keys.shape[0]
    n = min(N, K)
    rows = (ptr + (N - n) + torch.arange(n, device=queue.device)) % K  # (n,) destination rows
    queue.index_copy_(0, rows, keys[N - n:].to(queue.dtype))
    ptr.copy_((ptr + N) % K)
