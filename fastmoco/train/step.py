"""One optimizer step of MoCo, as the data flows:

    for each of accum_steps micro-batches:   loss, keys = MoCo(view_1, view_2[, small views])
                                                                             (query fwd, key fwd, InfoNCE)
                                             (loss / accum_steps).backward()     (DDP all-reduces on the last)
    optimizer step -> key encoder EMA (ops.ema_) -> enqueue of every micro-batch's keys (ops.enqueue_)

The EMA and the enqueue run once per optimizer step, never per micro-batch. With ``compile`` the forward (and
through AOTAutograd its backward) and the EMA + enqueue are ``torch.compile``d; in one process the whole MoCo
forward is one graph (``fullgraph=True``). Under DDP the query encoder is compiled inside its DDP wrapper and the
key encoder on its own, so the shuffle-BN collectives stay outside the graphs.
"""
import contextlib
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fastmoco import ops
from fastmoco.models.moco import QueryViews, gather_keys
from fastmoco.ops.ema import ema_pairs

from .distributed import CrossRankShuffle, ProcessGroup

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def ema_and_enqueue(dst, src, momentum: float, queue, ptr, keys) -> None:
    """The key-encoder EMA and the ring-buffer write, fused ops only (one graph when compiled)."""
    ops.ema_(dst, src, momentum)
    ops.enqueue_(queue, ptr, keys)


class MocoStep:
    """Owns the compiled/DDP-wrapped callables of a run; ``__call__`` runs one optimizer step."""

    def __init__(self, model, optimizer, cfg, pg: ProcessGroup):
        self.model, self.optimizer, self.pg = model, optimizer, pg
        self.accum = cfg.accum_steps
        self.channels_last = cfg.channels_last
        self.amp_dtype = AMP_DTYPES[cfg.amp_dtype] if cfg.amp else None
        self.scaler = torch.amp.GradScaler(pg.device.type, enabled=self.amp_dtype == torch.float16)
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode

        self.query_encoder = self.ddp = None  # None: the model's own encoder_q
        if pg.distributed:
            if cfg.sync_bn:
                model.encoder_q = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_q)
                model.encoder_k = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_k)
            else:
                model.key_shuffle = CrossRankShuffle()
            ids = [pg.device.index] if pg.device.type == "cuda" else None
            with warnings.catch_warnings():  # the argument's newer name does not exist in older torch
                warnings.simplefilter("ignore", FutureWarning)
                # BN statistics are averaged over the ranks after each step instead (average_buffers)
                # one DDP forward takes the query batches of every resolution (multi-crop's small views too)
                self.query_encoder = self.ddp = DDP(QueryViews(model.encoder_q), device_ids=ids,
                                                    broadcast_buffers=False)
        self.bn_buffers = [] if cfg.sync_bn else [b for b in model.buffers() if b.is_floating_point()
                                                  and b is not model.queue]
        self.forward = model
        if cfg.compile:
            if pg.distributed:
                self.query_encoder = torch.compile(self.query_encoder, mode=mode)
                model.encoder_k.compile(mode=mode)  # in place: the state_dict keys stay as they are
            else:
                self.forward = torch.compile(model, fullgraph=True, mode=mode)
        # a Python-float momentum is a compile-time constant: with a momentum schedule the EMA would recompile
        # every step, so then the post-step runs eagerly (it is one fused op launch per dtype anyway)
        self.post = None
        if cfg.compile and cfg.m_schedule == "const" and cfg.ops == "fused":
            self.post = torch.compile(ema_and_enqueue, fullgraph=True, mode=mode)
            self.ema_dst, self.ema_src = ema_pairs(model.encoder_k, model.encoder_q, model.bn_buffers_ema)

    def _views(self, v):
        return v.contiguous(memory_format=torch.channels_last) if self.channels_last else v

    def __call__(self, micro_batches, momentum: float) -> torch.Tensor:
        """``micro_batches``: ``accum_steps`` tuples (view 1, view 2[, small views]). Returns the step's mean loss
        (a device tensor, no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        losses, keys = [], []
        for i, (v1, v2, *small) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces the gradients on the last micro-batch's backward only
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with torch.autocast(self.pg.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, k = self.forward(self._views(v1), self._views(v2), self.query_encoder,
                                           *(self._views(s) for s in small))
                self.scaler.scale(loss / len(micro_batches)).backward()
            losses.append(loss.detach())
            keys.append(k)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.after_update(torch.cat(keys), momentum)
        self.pg.average_buffers(self.bn_buffers)
        return torch.stack(losses).mean()

    @torch.no_grad()
    def after_update(self, keys: torch.Tensor, momentum: float) -> None:
        """Key encoder <- EMA(query encoder), then every rank writes all ranks' keys of this step."""
        if self.post is None:
            self.model.momentum_update(momentum)
            self.model.enqueue(keys)
        else:
            self.post(self.ema_dst, self.ema_src, momentum, self.model.queue, self.model.ptr,
                      gather_keys(keys).to(self.model.queue.dtype))
