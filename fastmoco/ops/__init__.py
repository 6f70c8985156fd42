"""The drop-in fused ops (their contract is in the README). Importing this pulls in no models or training.

    from fastmoco import ops
    loss = ops.infonce(q, k, queue, temperature=0.2)
    loss = ops.infonce_inbatch(q, keys, offset=N * rank, temperature=1.0)   # MoCo v3: in-batch keys
    ops.ema_(key_params, query_params, 0.999)
    ops.enqueue_(queue, ptr, keys)
"""
from .enqueue import enqueue_, native_available
from .ema import EMA, ema_
from .infonce import InfoNCE, infonce
from .infonce_inbatch import InfoNCEInBatch, infonce_inbatch
from .reference import ema_reference_, enqueue_reference_, infonce_inbatch_reference, infonce_reference
from .implementations import IMPLEMENTATIONS, implementation

__all__ = ["infonce", "InfoNCE", "infonce_inbatch", "InfoNCEInBatch", "ema_", "EMA", "enqueue_", "native_available",
           "infonce_reference", "infonce_inbatch_reference", "ema_reference_", "enqueue_reference_", "IMPLEMENTATIONS", "implementation"]
