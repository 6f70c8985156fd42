"""MoCo v1/v2: query encoder, momentum key encoder, queue of negative keys.

One training step, as the trainer runs it (the method interface, ``methods.py``)::

    loss, keys = moco(view_1, view_2)        # InfoNCE of q against [k, queue]
    loss.backward(); optimizer.step()
    moco.after_step(keys, m)                 # key encoder <- EMA of the query encoder (ops.ema_), then the
                                             # ring-buffer write, pointer on the device (ops.enqueue_)

``queue`` (K, dim) and ``ptr`` (1,) int64 are buffers, so they live in the state_dict and in every checkpoint.
``key_shuffle`` is the BN guard around the key encoder: ``LocalShuffle`` (with Split-BN) in one process;
``shuffle_across_ranks`` swaps in ``CrossRankShuffle`` (the same interface) under torchrun.

The recipes (``presets``): v1 and v2 are the papers'. "fmnist" (the default) is tuned by measurement for under 10
minutes on 2 CPU cores (benchmarks/RESULTS.md sections 2 and 8): Fashion-MNIST's objects are centred and aligned,
and near-full crops (0.9) with stronger photometric augmentation and random erasing beat the ImageNet crop range
there (80.8 -> 82.6 % kNN at 5 epochs); in short runs the linear head at T=0.07 beat the MLP head at T=0.1 (84.57
vs 83.07 % at 2 epochs). It trains at 36 px (the 28 px images upsampled): larger feature maps beat more epochs at
28 px per minute of CPU (86.93 % kNN at 10 epochs in 9.8 min vs 86.56 % at 16 epochs in 10.0 min, one seed each;
RESULTS.md section 2.5).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from fastmoco import ops
from fastmoco.ops.ema import ema_pairs

from .backbones import build_backbone, has_batch_norm
from .heads import HEADS, projection_head
from .methods import Method, need, register
from .shuffle import CrossRankShuffle, LocalShuffle, gather_keys

# the queue size field's default. 1024: in runs of a few thousand steps a smaller queue measured better (84.18 vs
# 83.07 % kNN at 4096, 2 epochs); v3, which has no queue, refuses any other value
QUEUE_K = 1024
_QUEUE = dict(epochs=9, dim=128, mlp_dim=4096, proj_layers=2, pred_last_bn=False, m_schedule="const",
              optimizer="sgd", lr=0.06, lr_ref_batch=0, weight_decay=5e-4, warmup_epochs=0.0)


def check_method_args(m: float, T: float, ops_impl: str):
    """The arguments every method takes (key momentum, temperature, which ops run), checked; returns the ops
    implementation picked (``fastmoco.ops.implementation``)."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    return ops.implementation(ops_impl)  # one of ops.IMPLEMENTATIONS, else ValueError


@register
class MoCo(Method):
    name = "queue"
    about = "MoCo v1/v2: negatives from a queue of earlier keys"
    presets = {
        "v1": dict(_QUEUE, head="linear", T=0.07, m=0.999, aug="v1", schedule="step", crop_min_scale=0.2,
                   jitter=0.4, erase_p=0.0, image_size=0),
        "v2": dict(_QUEUE, head="mlp", T=0.2, m=0.999, aug="v2", schedule="cosine", crop_min_scale=0.2, jitter=0.4,
                   erase_p=0.0, image_size=0),
        "fmnist": dict(_QUEUE, head="linear", T=0.07, m=0.99, aug="v2", schedule="cosine", crop_min_scale=0.9,
                       jitter=0.8, erase_p=0.5, image_size=36),
    }
    heads = HEADS
    preset_notes = {"v1": "linear head, T=0.07, step LR", "v2": "MLP head, blur, T=0.2, cosine",
                    "fmnist": "short CPU runs at 36 px: linear head, T=0.07, v2 augmentation with near-full crops, "
                              "cosine"}

    @classmethod
    def default_preset(cls, arch: str) -> str:
        return "fmnist"

    @classmethod
    def paper_preset(cls, vit: bool, head: str | None = None) -> str:
        return "v1" if head == "linear" else "v2"

    @classmethod
    def check_config(cls, cfg) -> None:
        need(cfg.head in HEADS, f"unknown head {cfg.head!r}; choose one of {list(HEADS)}")

    @classmethod
    def runtime_defaults(cls, cfg, world_size: int, device_type: str) -> dict:
        # Split-BN: the one-process guard of BN (where the backbone has BN); shuffle-BN takes over under torchrun
        guard = world_size == 1 and not cfg.sync_bn
        return dict(sync_bn=False, bn_splits=8 if guard and has_batch_norm(cfg.arch) else 1)

    @classmethod
    def check_runtime(cls, cfg, world_size: int, device_type: str) -> None:
        need(not (cfg.sync_bn and device_type != "cuda"), "sync_bn needs CUDA devices (SyncBatchNorm has no CPU "
             "kernel); on CPU the default shuffle-BN (Split-BN in one process) guards BN")
        need(not (cfg.sync_bn and world_size == 1), "sync_bn needs several processes (torchrun): in one process "
             "it would be plain BN over the batch; leave it off and Split-BN guards BN")
    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, K: int = 65536, m: float = 0.999,
                 T: float = 0.07, head: str = "linear", symmetric: bool = False, ops_impl: str = "fused",
                 bn_buffers_ema: bool = False):
        super().__init__()
        if K < 1:
            raise ValueError(f"queue size K must be >= 1, got {K}")
        self.ops = check_method_args(m, T, ops_impl)
        self.K, self.m, self.T, self.symmetric, self.ops_impl = K, m, T, symmetric, ops_impl
        self.query_views = 2 if symmetric else 1  # both views are queries when symmetric
        self.bn_buffers_ema = bn_buffers_ema
        self.encoder_q = nn.Sequential()
        self.encoder_q.add_module("backbone", backbone)
        self.encoder_q.add_module("head", projection_head(head, feat_dim, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))  # (K, dim) negative keys
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))  # (1,) next row to write
        self.key_shuffle = LocalShuffle()
        self._post = None  # the compiled EMA + enqueue (compile_after_step)

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "MoCo":
        """Build from a TrainConfig-like object; ``in_channels`` comes from the data (1 for Fashion-MNIST)."""
        backbone = build_backbone(cfg.arch, cfg.width, cfg.stem, in_channels, cfg.bn_splits,
                                  freeze_patch_embed=cfg.freeze_patch_embed)
        return cls(backbone, backbone.feat_dim, cfg.dim, cfg.K, cfg.m, cfg.T, cfg.head, cfg.symmetric, cfg.ops,
                   cfg.ema_bn_buffers)

    def shuffle_across_ranks(self) -> None:
        self.key_shuffle = CrossRankShuffle()

    # -- the step's pieces -------------------------------------------------------------------------------------
    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys (N, dim) of ``x`` from the key encoder, behind the BN guard."""
        x, undo = self.key_shuffle(x)
        return undo(F.normalize(self.encoder_k(x), dim=1))  # (N, dim)

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # under autocast q and k arrive in bf16/fp16 while the queue is kept in fp32: the loss runs in the
        # queue's dtype (the ops want one dtype; the fused op accumulates in fp32 anyway)
        dtype = self.queue.dtype
        return self.ops.infonce(q.to(dtype), k.to(dtype), self.queue, self.T)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, encoder_q: nn.Module | None = None,
                small: torch.Tensor | None = None):
        """Returns (loss, keys to enqueue). ``encoder_q`` replaces the query encoder in the call: a module that
        takes the query batches of each resolution and returns their outputs (``QueryViews``, DDP-wrapped in a
        distributed run: DDP wants one forward per backward). Symmetric: both views serve as query and key (one
        query forward over both views) and both keys are queued. ``small`` (S*N, C, s, s), crop-major: multi-crop's
        low-resolution views, queries only. The loss is the mean over every (query, key of another view) pair."""
        groups = [torch.cat([im_q, im_k]) if self.symmetric else im_q] + ([small] if small is not None else [])
        outs = encode_queries(self.encoder_q, groups) if encoder_q is None else encoder_q(*groups)
        q = F.normalize(outs[0], dim=1)  # (N, dim), or (2N, dim) symmetric
        if not self.symmetric:
            k = self.keys(im_k)  # (N, dim)
            pairs, keys = [(q, k)], k
        else:
            q1, q2 = q.chunk(2)  # (N, dim) each
            k2, k1 = self.keys(im_k), self.keys(im_q)
            pairs, keys = [(q1, k2), (q2, k1)], torch.cat([k2, k1])
        if small is not None:
            qs = F.normalize(outs[1], dim=1)  # (S*N, dim)
            crops = qs.shape[0] // im_q.shape[0]
            pairs += [(qs, k.repeat(crops, 1)) for _, k in pairs]  # each small view against every key
        rows = sum(qi.shape[0] for qi, _ in pairs)  # every query row weighs the same
        return sum(self.loss(qi, ki) * (qi.shape[0] / rows) for qi, ki in pairs), keys

    def query_network(self) -> nn.Module:
        """What DDP wraps: every trained parameter, called with the query batches of each resolution."""
        return QueryViews(self.encoder_q)

    def averaged_buffers(self) -> list[torch.Tensor]:
        """The float buffers each rank updates on its own (BN running statistics) that the ranks average after a
        step; not the queue, which every rank writes identically."""
        return [b for b in self.buffers() if b.is_floating_point() and b is not self.queue]

    # -- after the optimizer step ------------------------------------------------------------------------------
    def compile_after_step(self, mode: str | None) -> None:
        """The EMA and the enqueue as one compiled graph (fused ops; a constant momentum, else every new value of
        the Python float would recompile it)."""
        if self.ops.compiles:
            self._post = torch.compile(ema_and_enqueue, fullgraph=True, mode=mode)
            self._pairs = ema_pairs(self.encoder_k, self.encoder_q, self.bn_buffers_ema)

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor, m: float) -> None:
        """Key encoder <- EMA(query encoder), then every rank writes all ranks' keys of this step."""
        if self._post is None:
            self.momentum_update(m)
            self.enqueue(keys)
        else:
            self._post(*self._pairs, m, self.queue, self.ptr, gather_keys(keys).to(self.queue.dtype))

    @torch.no_grad()
    def momentum_update(self, m: float | None = None) -> None:
        m = self.m if m is None else m
        dst, src = ema_pairs(self.encoder_k, self.encoder_q, self.bn_buffers_ema)
        self.ops.ema_(dst, src, m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write this step's keys; under torch.distributed every rank writes all ranks' keys, in rank order."""
        keys = gather_keys(keys)
        self.ops.enqueue_(self.queue, self.ptr, keys)


def ema_and_enqueue(dst, src, momentum: float, queue, ptr, keys) -> None:
    """The key-encoder EMA and the ring-buffer write, fused ops only (one graph when compiled)."""
    ops.ema_(dst, src, momentum)
    ops.enqueue_(queue, ptr, keys)


class QueryViews(nn.Module):
    """The query encoder over query batches of several resolutions in one call (multi-crop), so that DDP sees one
    forward per backward; it holds no parameters of its own."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, *groups: torch.Tensor) -> list[torch.Tensor]:
        return encode_queries(self.encoder, groups)


def encode_queries(encoder: nn.Module, groups) -> list[torch.Tensor]:
    """``encoder`` over each batch of ``groups``; the BN running statistics keep what the first (the full-size
    views) left. Multi-crop's small views would otherwise pull the statistics that evaluation and export use
    towards another resolution (measured: re-estimating them on full views after runs that let them gave +0.12 to
    +0.20 kNN points; keeping them from the full views, +0.06 on the one run compared; benchmarks/RESULTS.md 2.6)."""
    out = [encoder(groups[0])]
    if len(groups) > 1:  # the other batches update copies of the buffers, dropped afterwards (restoring the
        # buffers in place instead would break the backward, which saved them)
        scratch = {name: b.clone() for name, b in encoder.named_buffers()}
        out += [torch.func.functional_call(encoder, scratch, (x,)) for x in groups[1:]]
    return out
