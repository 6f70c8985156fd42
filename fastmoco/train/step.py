"""One optimizer step of a method (MoCo v1/v2 or v3, ``fastmoco.models.methods``), as the data flows:

    for each of accum_steps micro-batches:   loss, keys = method(view_1, view_2[, small views])
                                                                   (query fwd, key fwd, InfoNCE)
                                             (loss / accum_steps).backward()     (DDP all-reduces on the last)
    optimizer step -> method.after_step(keys, m): key encoder EMA (ops.ema_), and for v1/v2 the enqueue of
                      every micro-batch's keys (ops.enqueue_)

With the guard on (``--guard on``) the step is a transaction (``guard.StepTransaction``): a step whose loss or
gradients are not finite on any process leaves every state tensor as it was, decided on the device.

The EMA and the enqueue run once per optimizer step, never per micro-batch. With ``compile`` the forward (and
through AOTAutograd its backward) and the after-step are ``torch.compile``d; in one process the whole forward is
one graph (``fullgraph=True``). Under DDP the query network is compiled inside its DDP wrapper and the key encoder
on its own, so the collectives (shuffle-BN, the gathered keys) stay outside the graphs.

Accumulation with in-batch negatives (v3): each micro-batch's queries are contrasted with the keys of that
micro-batch on every rank (batch x world candidates), not with the whole optimizer step's; the gradients of the
micro-batches are averaged, as for v1/v2.
"""
import contextlib
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fastmoco.runs import config
from fastmoco.runs.distributed import ProcessGroup

from .guard import StepTransaction

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the config's AMP_DTYPES, as torch dtypes
assert tuple(AMP_DTYPES) == config.AMP_DTYPES, "every autocast dtype the config allows is mapped here"


class MocoStep:
    """Owns the compiled/DDP-wrapped callables of a run; ``__call__`` runs one optimizer step."""

    def __init__(self, model, optimizer, cfg, pg: ProcessGroup):
        self.model, self.optimizer, self.pg = model, optimizer, pg
        self.accum = cfg.accum_steps
        self.channels_last = cfg.channels_last
        self.amp_dtype = AMP_DTYPES[cfg.amp_dtype] if cfg.amp else None
        self.scaler = torch.amp.GradScaler(pg.device.type, enabled=self.amp_dtype == torch.float16)
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode

        self.query_encoder = self.ddp = None  # None: the method's own query network
        if pg.distributed:
            if cfg.sync_bn:  # the whole model; the BN modules are replaced, their parameters kept
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # the method's cross-rank BN guard, if it has one (v1/v2: shuffle-BN)
                model.shuffle_across_ranks()
            ids = [pg.device.index] if pg.device.type == "cuda" else None
            with warnings.catch_warnings():  # the argument's newer name does not exist in older torch
                warnings.simplefilter("ignore", FutureWarning)
                # BN statistics are averaged over the ranks after each step instead (average_buffers)
                # one DDP forward takes the query batches of every view and resolution
                self.query_encoder = self.ddp = DDP(model.query_network(), device_ids=ids, broadcast_buffers=False)
        self.bn_buffers = [] if cfg.sync_bn else model.averaged_buffers()
        self.forward = model
        if cfg.compile:
            if pg.distributed:
                self.query_encoder = torch.compile(self.query_encoder, mode=mode)
                model.encoder_k.compile(mode=mode)  # in place: the state_dict keys stay as they are
            else:
                self.forward = torch.compile(model, fullgraph=True, mode=mode)
        # a Python-float momentum is a compile-time constant: with a momentum schedule the EMA would recompile
        # every step, so then the after-step runs eagerly (it is one fused op launch per dtype anyway)
        if cfg.compile and cfg.m_schedule == "const":
            model.compile_after_step(mode)
        # built last: the state it watches is the model's final tensors (SyncBatchNorm replaces modules above)
        self.transaction = StepTransaction(model, optimizer, pg) if cfg.guard == "on" else None
        # with fp16's GradScaler an inf gradient is the scaler's business (it skips the update and lowers the
        # scale, routinely in the first steps): the guard then judges the loss alone
        self.check_grads = not self.scaler.is_enabled()
        self.ok = None  # the last step's verdict (a device tensor) with the guard on

    def _views(self, v):
        return v.contiguous(memory_format=torch.channels_last) if self.channels_last else v

    def __call__(self, micro_batches, momentum: float, times=None) -> torch.Tensor:
        """``micro_batches``: ``accum_steps`` tuples (view 1, view 2[, small views]). Returns the step's mean loss
        (a device tensor, no host sync). ``times``: a ``timing.StepTimes`` whose phases it marks."""
        mark = times.mark if times is not None else _no_mark
        self.optimizer.zero_grad(set_to_none=True)
        if self.transaction is not None:
            self.transaction.begin()  # before the forward: it moves BN running statistics
        losses, keys = [], []
        for i, (v1, v2, *small) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces the gradients on the last micro-batch's backward only
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with torch.autocast(self.pg.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, k = self.forward(self._views(v1), self._views(v2), self.query_encoder,
                                           *(self._views(s) for s in small))
                mark("forward")
                self.scaler.scale(loss / len(micro_batches)).backward()
                mark("backward")
            losses.append(loss.detach())
            if k is not None:
                keys.append(k)
        loss = torch.stack(losses).mean()
        if self.transaction is not None:
            self.ok = self.transaction.finite(loss, self.check_grads)
            if self.transaction.host_decides and not self.ok:  # a CPU tensor: reading it syncs nothing
                self.transaction.skip()
                return loss
        self.scaler.step(self.optimizer)
        self.scaler.update()
        mark("optimizer")
        self.after_update(torch.cat(keys) if keys else None, momentum)
        self.pg.average_buffers(self.bn_buffers)
        if self.transaction is not None and not self.transaction.host_decides:
            self.transaction.end(self.ok)
        mark("ema_enqueue")
        return loss

    @torch.no_grad()
    def after_update(self, keys, momentum: float) -> None:
        """The method's after-step: the EMA (and for v1/v2 every rank writes all ranks' keys of this step)."""
        self.model.after_step(keys, momentum)


def _no_mark(_phase: str) -> None:
    pass
