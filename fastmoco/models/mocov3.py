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

The recipes (``presets``): "v3" is the paper's ResNet-50 one (lr 0.6 x batch/256, 10 warm-up epochs of 100),
"v3-vit" its ViT one; "fmnist-v3" and "fmnist-v3-vit" are sized for the embedded default on 2 CPU cores, each
chosen by the measurements noted beside it (benchmarks/RESULTS.md section 10).
"""
import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmoco.ops.ema import ema_pairs

from .backbones import build_backbone
from .heads import bn_mlp
from .methods import Method, need, register
from .moco import QUEUE_K, check_method_args
from .shuffle import gather_keys
from .vit import is_timm, is_vit

_V3 = dict(head="bn-mlp", dim=256, mlp_dim=4096, m=0.99, m_schedule="cosine", aug="v3", schedule="cosine",
           optimizer="lars", proj_layers=2, pred_last_bn=False)


@register
class MoCoV3(Method):
    name = "v3"
    about = "negatives from the global batch, a predictor, no queue"
    presets = {
        "v3": dict(_V3, epochs=100, T=1.0, crop_min_scale=0.2, jitter=0.4, erase_p=0.0, image_size=0, lr=0.6,
                   lr_ref_batch=256, weight_decay=1e-6, warmup_epochs=10.0),
        # measured in 1-epoch probes (RESULTS.md section 10): T 0.2 over 1.0 (77.4 vs 76.2 % kNN), base lr 9.6 over
        # 0.6 / 2.4 / 4.8 (83.7 vs 77.4 / 81.7 / 83.0 %; 19.2 gave 83.6), hidden width 1024 over 256 (80.2 vs 79.4 %)
        "fmnist-v3": dict(_V3, epochs=4, T=0.2, crop_min_scale=0.9, jitter=0.8, erase_p=0.5, image_size=36,
                          mlp_dim=1024, lr=9.6, lr_ref_batch=256, weight_decay=1e-6, warmup_epochs=0.5),
        # the ViT recipe of the original: AdamW (torch's betas, wd 0.1 on every parameter), lr 1.5e-4 x batch/256, 40
        # warm-up epochs of 300, T=0.2, a 3-layer projector, the predictor with its last BN, crops from 8 % of the area
        "v3-vit": dict(_V3, epochs=300, T=0.2, crop_min_scale=0.08, jitter=0.4, erase_p=0.0, image_size=0, lr=1.5e-4,
                       lr_ref_batch=256, weight_decay=0.1, warmup_epochs=40.0, optimizer="adamw", proj_layers=3,
                       pred_last_bn=True),
        # the ViT recipe sized for the embedded default (RESULTS.md section 10.1): 1-epoch probes on 10,240 images
        # chose Fashion-MNIST's augmentation (crops from 90 %, jitter 0.8, erasing) over the ImageNet one (69.6 vs
        # 66.9 % kNN) or crops from 50 % (68.4), base lr 5e-3 over 1.5e-3 / 1.5e-2 (70.8 vs 69.6 / 66.8 %), and a
        # 1024-wide projector and predictor (4096 costs 1.7x the time per pair on 2 CPU cores)
        "fmnist-v3-vit": dict(_V3, epochs=1, T=0.2, crop_min_scale=0.9, jitter=0.8, erase_p=0.5, image_size=28,
                              mlp_dim=1024, lr=5e-3, lr_ref_batch=256, weight_decay=0.1, warmup_epochs=0.2,
                              optimizer="adamw", proj_layers=3, pred_last_bn=True),
    }
    preset_notes = {"v3": "MoCo v3's ResNet recipe: LARS, T=1, cosine momentum",
                    "fmnist-v3": "v3 for short CPU runs; the default with --method v3",
                    "v3-vit": "MoCo v3's ViT recipe: AdamW, T=0.2; the default on ViTs",
                    "fmnist-v3-vit": "the ViT recipe sized for vit_fmnist on CPU; its default"}
    query_views = 2  # both views are queries
    heads = ("bn-mlp",)  # its own projector (heads.bn_mlp)

    @classmethod
    def default_preset(cls, arch: str) -> str:
        if is_vit(arch):  # on the small ViT, the recipe sized for it
            return "fmnist-v3-vit" if arch == "vit_fmnist" else "v3-vit"
        return "fmnist-v3"

    @classmethod
    def paper_preset(cls, vit: bool, head: str | None = None) -> str:
        return "v3-vit" if vit else "v3"

    @classmethod
    def check_config(cls, cfg) -> None:
        need(cfg.head == "bn-mlp", f"method v3 trains its own projector (head bn-mlp), got head {cfg.head!r}")
        need(cfg.small_crops == 0, "method v3 contrasts two views per image: multi-crop (--small-crops) is a "
             "v1/v2 option here; pass --small-crops 0")
        need(cfg.K == QUEUE_K, f"method v3 has no queue (its negatives are the batch's other keys): --K "
             f"{cfg.K} would change nothing; leave --K out")
        need(not cfg.symmetric, "method v3's loss is always symmetric (both views are queries): leave "
             "--symmetric out")
        need(cfg.mlp_dim >= 1 and cfg.proj_layers >= 1 and cfg.pred_layers >= 1,
             f"v3 needs mlp_dim, proj_layers and pred_layers >= 1, got {cfg.mlp_dim}, {cfg.proj_layers}, "
             f"{cfg.pred_layers}")

    @classmethod
    def runtime_defaults(cls, cfg, world_size: int, device_type: str) -> dict:
        # the whole model converts to SyncBatchNorm under torchrun, where it has kernels (CUDA); no Split-BN
        return dict(sync_bn=world_size > 1 and device_type == "cuda", bn_splits=1)

    @classmethod
    def check_runtime(cls, cfg, world_size: int, device_type: str) -> None:
        need(not (cfg.sync_bn and device_type != "cuda"), "sync_bn needs CUDA devices (SyncBatchNorm has no CPU "
             "kernel); on CPU v3 normalises each process's batch and averages the running statistics after each "
             "step")
        need(not (cfg.sync_bn and world_size == 1), "sync_bn needs several processes (torchrun); in one process "
             "v3 trains plain BN over each view's batch, which is what SyncBatchNorm would compute there")

    @classmethod
    def linear_protocol(cls, arch: str) -> str:
        return "v3-vit" if is_vit(arch) or is_timm(arch) else "v3"

    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 256, mlp_dim: int = 4096, T: float = 1.0,
                 m: float = 0.99, proj_layers: int = 2, pred_layers: int = 2, pred_last_bn: bool = False,
                 ops_impl: str = "fused", bn_buffers_ema: bool = False):
        super().__init__()
        self.ops = check_method_args(m, T, ops_impl)
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
        return self.ops.infonce_inbatch(q.float(), keys, q.shape[0] * rank, self.T) * (2 * self.T)

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
        if self.ops.compiles:
            self._post = torch.compile(self.ops.ema_, fullgraph=True, mode=mode)
            self._pairs = self.ema_pairs()

    @torch.no_grad()
    def after_step(self, keys, m: float) -> None:
        """Momentum encoder <- EMA(base encoder) at momentum ``m``; ``keys`` is unused (no queue)."""
        if self._post is not None:
            self._post(*self._pairs, m)
        else:
            self.ops.ema_(*self.ema_pairs(), m)


class QueryPair(nn.Module):
    """predictor(encoder(x)) of both views, one pass each (each view's batch its own BN statistics, as the original
    computes them), in one call so that DDP sees one forward per backward; no parameters of its own."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        return self.predictor(self.encoder(x1)), self.predictor(self.encoder(x2))
