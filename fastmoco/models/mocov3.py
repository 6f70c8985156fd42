"""MoCo v3 (Chen, Xie, He 2021): no queue; the negatives are the other keys of the global batch.

    q_v = predictor(projector(backbone(x_v)))        for both views v = 1, 2 (one pass each, with gradient)
    k_v = momentum encoder(x_v)                      (EMA of backbone + projector; no gradient)
    loss = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = 2T * CE(q K^T / T, arange(N) + N * rank)

q and k are L2-normalised; K holds the keys of every rank (gathered, no gradient), so each query's positive
is its own image's key at row ``N * rank + i`` (``ops.infonce_inbatch``: the logits are never materialised). The
factor 2T is the original's (it keeps the gradient's scale independent of T); at uniform logits the sum is
4T ln(N W).

One step, as the trainer runs it (the method interface, ``methods.py``)::

    loss, _ = v3(view_1, view_2)
    loss.backward(); optimizer.step()
    v3.after_step(None, m)        # momentum encoder <- EMA of backbone + projector (not the predictor, nor BN
                                  # buffers), at the step's momentum m

The order: step t's EMA runs after its optimizer update, so step t+1's keys come from the averaged encoder, as in
the original, where the EMA opens the next step's forward before its keys. The original's schedule reads the
momentum at the next step's progress; here the step's own (the cosine moved by one step: at most
(1 - m0) * pi / 2 * (steps per run)^-1 apart), and the original's first EMA, of two equal encoders, is the
identity, so the two run the same EMAs in the same places.

BatchNorm: one process trains plain BN over each view's batch (no Split-BN: without a queue no key can leak its
batch into other steps' negatives); torchrun on CUDA converts the whole model to SyncBatchNorm, as the original
does; on CPU (gloo, which SyncBatchNorm has no kernel for) each rank normalises its own slice and the running
statistics are averaged after each step.
"""
import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmoco import ops
from fastmoco.ops.ema import ema_pairs

from .backbones import build_backbone
from .heads import bn_mlp
from .moco import check_method_args
from .shuffle import gather_keys


class MoCoV3(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 256, mlp_dim: int = 4096, T: float = 1.0,
                 m: float = 0.99, proj_layers: int = 2, pred_layers: int = 2, pred_last_bn: bool = False,
                 ops_impl: str = "fused", bn_buffers_ema: bool = False):
        super().__init__()
        check_method_args(m, T, ops_impl)
        self.m, self.T, self.ops_impl, self.bn_buffers_ema = m, T, ops_impl, bn_buffers_ema
        # encoder_q is the original's base encoder: the backbone with the projector as its head
        self.encoder_q = nn.Sequential()
        self.encoder_q.add_module("backbone", backbone)
        self.encoder_q.add_module("head", bn_mlp(proj_layers, feat_dim, mlp_dim, dim, last_bn=True))
        self.predictor = bn_mlp(pred_layers, dim, mlp_dim, dim, last_bn=pred_last_bn)
        self.encoder_k = copy.deepcopy(self.encoder_q)  # the momentum encoder: backbone + projector
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self._post = None  # the compiled EMA (compile_after_step)

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "MoCoV3":
        # zero-initialised residual branches, as the original builds its ResNets (ViTs: their own init)
        backbone = build_backbone(cfg.arch, cfg.width, cfg.stem, in_channels, cfg.bn_splits, zero_init_residual=True,
                                  freeze_patch_embed=cfg.freeze_patch_embed)
        return cls(backbone, backbone.feat_dim, cfg.dim, cfg.mlp_dim, cfg.T, cfg.m, cfg.proj_layers, cfg.pred_layers,
                   cfg.pred_last_bn, cfg.ops, cfg.ema_bn_buffers)

    @property
    def backbone(self) -> nn.Module:
        """The base encoder's backbone: what kNN, linear evaluation and export use."""
        return self.encoder_q.backbone

    def query_network(self) -> nn.Module:
        """What DDP wraps: backbone + projector + predictor over both views."""
        return QueryPair(self.encoder_q, self.predictor)

    def averaged_buffers(self) -> list[torch.Tensor]:
        return [b for b in self.buffers() if b.is_floating_point()]

    # -- the step's pieces -------------------------------------------------------------------------------------
    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder_k(x), dim=1)  # (N, dim)

    def ctr(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """2T x cross-entropy of this rank's queries against every rank's keys, positives at N * rank + i."""
        keys = gather_keys(k).float()  # (W*N, dim), rank 0's rows first
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        fn = ops.infonce_inbatch if self.ops_impl == "fused" else ops.infonce_inbatch_reference
        return fn(q.float(), keys, q.shape[0] * rank, self.T) * (2 * self.T)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, encoder_q: nn.Module | None = None,
                small: torch.Tensor | None = None):
        """Returns (loss, None): nothing to enqueue. ``encoder_q``: the DDP-wrapped ``query_network()``."""
        if small is not None:
            raise ValueError("MoCo v3 takes two views per image; multi-crop's small views are not part of it")
        q1, q2 = (encoder_q if encoder_q is not None else self.query_network())(im_q, im_k)
        q1, q2 = F.normalize(q1, dim=1), F.normalize(q2, dim=1)  # (N, dim) each
        k1, k2 = self.keys(im_q), self.keys(im_k)  # (N, dim) each
        return self.ctr(q1, k2) + self.ctr(q2, k1), None

    # -- after the optimizer step ------------------------------------------------------------------------------
    def ema_pairs(self):
        """(momentum encoder tensors, base encoder tensors): the predictor has no counterpart and is left out."""
        return ema_pairs(self.encoder_k, self.encoder_q, self.bn_buffers_ema)

    def compile_after_step(self, mode: str | None) -> None:
        if self.ops_impl == "fused":
            self._post = torch.compile(ops.ema_, fullgraph=True, mode=mode)
            self._pairs = self.ema_pairs()

    @torch.no_grad()
    def after_step(self, keys, m: float) -> None:
        """Momentum encoder <- EMA(base encoder) at momentum ``m``; ``keys`` is unused (no queue)."""
        if self._post is not None:
            self._post(*self._pairs, m)
        elif self.ops_impl == "fused":
            ops.ema_(*self.ema_pairs(), m)
        else:
            ops.ema_reference_(*self.ema_pairs(), m)


class QueryPair(nn.Module):
    """predictor(encoder(x)) of both views, one pass each (each view's batch its own BN statistics, as the original
    computes them), in one call so that DDP sees one forward per backward; no parameters of its own."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        return self.predictor(self.encoder(x1)), self.predictor(self.encoder(x2))
