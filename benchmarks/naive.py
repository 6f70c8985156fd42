"""The original MoCo code's ways, kept as benchmark baselines (the fused ops' references live in fastmoco.ops)."""


def naive_enqueue(queue, ptr, keys):
    """The original code's queue write: a host read of ptr, and K % N == 0 assumed (no wrap inside one batch)."""
    p = int(ptr)
    queue[p:p + keys.shape[0]] = keys
    ptr[0] = (p + keys.shape[0]) % queue.shape[0]
