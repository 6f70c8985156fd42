"""Vision Transformers as MoCo v3 trains them, and any timm model, as fastmoco backbones.

``vit_small`` / ``vit_base`` are timm's ``VisionTransformer`` shaped as the MoCo v3 code defines them: patch 16,
depth 12, 12 heads for both (S: width 384, B: 768), MLP ratio 4, qkv bias, LayerNorm eps 1e-6, the class token
kept and used as the feature (after the final norm). ``vit_fmnist`` is a small one for 28-36 px images: patch 4,
width 96, depth 4, 3 heads (Fashion-MNIST at 28 px: 7 x 7 patches + the class token).

The position embedding is fixed, never trained: the 2-D sin-cos embedding of the original (per patch
[sin(x w), cos(x w), sin(y w), cos(y w)] with w = 1e4^(-i/(D/4)), zero for the class token), computed for the
input's patch grid in each forward, so a backbone takes any image size divisible by its patch. The original's
initialisation: xavier-uniform Linear weights (for qkv the bound sqrt(6 / (out/3 + in)), as three separate
matrices), zero biases, class token N(0, 1e-6), the patch projection xavier-uniform over its fan-in
(channels x patch^2) and fan-out; with ``freeze_patch_embed`` (on by default for ViTs: MoCo v3's stability
trick) the patch projection keeps those random weights and gets no gradient.

timm options relied on (timm 1.0): ``VisionTransformer(img_size, patch_size, in_chans, num_classes=0,
global_pool="token", embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_layer, class_token=True,
pos_embed="none", dynamic_img_size=True)``, its ``_pos_embed`` hook (patch tokens arrive as (N, H, W, D) with
``dynamic_img_size``), ``patch_embed.proj`` / ``patch_embed.patch_size``, ``cls_token``, ``num_prefix_tokens``
(older timm called it ``num_tokens``) and ``num_features``. ``timm:NAME`` is ``timm.create_model(NAME,
num_classes=0, in_chans=C)``: its own ``forward_features`` and pooling, its width read from ``num_features``.
"""
import math
from functools import partial

import torch
from torch import nn

VITS = {
    "vit_small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12),
    "vit_base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_fmnist": dict(patch_size=4, embed_dim=96, depth=4, num_heads=3),
}
TIMM_PREFIX = "timm:"
SINCOS_TEMPERATURE = 1e4


def is_vit(arch: str) -> bool:
    return arch in VITS


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def sincos_2d(h: int, w: int, dim: int, temperature: float = SINCOS_TEMPERATURE, device=None) -> torch.Tensor:
    """(h*w, dim) fixed position embedding of an h x w patch grid, in the patch tokens' row-major order, as the
    MoCo v3 code builds it (its meshgrid(grid_w, grid_h) with 'ij' indexing: on a square grid a token's first
    half encodes its row, the second half its column)."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32, device=device),
                                    torch.arange(h, dtype=torch.float32, device=device), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)  # (D/4,)
    out_w = grid_w.flatten()[:, None] * omega[None]  # (h*w, D/4)
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)  # (h*w, D)


def pos_embed_table(h: int, w: int, dim: int) -> torch.Tensor:
    """(1, 1 + h*w, dim) the position embedding as the original MoCo v3 code (and timm) stores it: a row of zeros
    for the class token, then ``sincos_2d``. fastmoco computes it in each forward instead; checkpoint conversion
    reads and writes this table."""
    return torch.cat([torch.zeros(1, dim), sincos_2d(h, w, dim)])[None]


def _timm_vit():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as exc:  # a requirement: only a broken environment lacks it
        raise ImportError(f"ViT backbones need timm (pip install -r requirements.txt): {exc}") from None
    return VisionTransformer


def build_vit(arch: str, in_channels: int, freeze_patch_embed: bool = True) -> nn.Module:
    """``vit_small`` / ``vit_base`` / ``vit_fmnist`` with MoCo v3's init and fixed position embedding."""
    VisionTransformer = _timm_vit()

    class MocoViT(VisionTransformer):
        def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, D) patch tokens
            n, h, w, d = x.shape
            x = x.reshape(n, h * w, d) + sincos_2d(h, w, d, device=x.device).to(x.dtype)  # (N, h*w, D)
            x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)  # (N, 1 + h*w, D): class token, no pos
            return self.pos_drop(x)

    spec = VITS[arch]
    p = spec["patch_size"]
    net = MocoViT(img_size=p * 14, in_chans=in_channels, num_classes=0, global_pool="token", mlp_ratio=4.0,
                  qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), class_token=True, pos_embed="none",
                  dynamic_img_size=True, **spec)
    _moco_v3_init(net, in_channels, p, spec["embed_dim"], freeze_patch_embed)
    net.feat_dim, net.patch_size = spec["embed_dim"], p
    return net


@torch.no_grad()
def _moco_v3_init(net, in_channels: int, patch: int, dim: int, freeze: bool) -> None:
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:  # three (dim x dim) matrices stacked: each initialised as its own
                bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(net.cls_token, std=1e-6)
    proj = net.patch_embed.proj
    bound = math.sqrt(6.0 / float(in_channels * patch * patch + dim))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    if freeze:  # the stability trick: a random patch projection, never trained
        proj.weight.requires_grad_(False)
        proj.bias.requires_grad_(False)


def build_timm(arch: str, in_channels: int) -> nn.Module:
    """Any timm model by name (``timm:NAME``) as a feature extractor: (N, C, H, W) -> (N, num_features)."""
    import timm

    name = arch[len(TIMM_PREFIX):]
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    except RuntimeError as exc:  # timm's "Unknown model (NAME)"
        raise ValueError(f"--arch {arch}: {str(exc).splitlines()[0]}") from None
    net.feat_dim = net.num_features
    return net
