"""A backbone's shape read from its weights: which of fastmoco's architectures a state_dict with torchvision / timm
(or original MoCo v3) names is, at which width, stem, input channels and, for a ViT, image size. The importers
build the network this names and load the weights into it; ``describe`` puts a shape in words for messages."""
import math

import torch

from fastmoco.errors import ConvertError

from .backbones import ARCHS
from .vit import VITS, pos_embed_table


def is_vit_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd


def infer_vit(sd: dict, error=ConvertError) -> dict:
    """arch, in_channels and image size (from the stored position table, 224 px without one) of a ViT state_dict
    with timm / original MoCo v3 names; ``error`` names what was found when fastmoco builds no such ViT."""
    proj = sd["patch_embed.proj.weight"]  # (width, channels, patch, patch)
    width, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    found = [name for name, spec in VITS.items()
             if (spec["patch_size"], spec["embed_dim"], spec["depth"]) == (patch, width, depth)]
    if not found or "cls_token" not in sd:
        what = f"patch {patch}, width {width}, depth {depth}" + ("" if "cls_token" in sd else ", no class token")
        builds = "; ".join(f"{n}: patch {s['patch_size']}, width {s['embed_dim']}, depth {s['depth']}"
                           for n, s in VITS.items())
        raise error(f"a ViT fastmoco cannot build ({what}); it builds {builds}")
    pos = sd.get("pos_embed")
    grid = math.isqrt(pos.shape[1] - 1) if pos is not None else 224 // patch
    return dict(arch=found[0], in_channels=in_channels, image_size=grid * patch)


def infer_backbone(sd: dict) -> dict:
    """The shape of a backbone state_dict with torchvision / timm names: ResNets (arch, width, stem, in_channels)
    and ViTs (arch, in_channels, image_size); one line naming what was found when fastmoco builds neither."""
    if is_vit_state_dict(sd):
        return infer_vit(sd)
    if "conv1.weight" not in sd:
        raise ConvertError(f"not a backbone fastmoco builds: neither a ResNet (conv1.weight) nor a ViT "
                           f"(patch_embed.proj.weight); its keys start {', '.join(list(sd)[:3])}")
    return infer_resnet(sd)


def infer_resnet(sd: dict) -> dict:
    """arch, width, stem and in_channels of a torchvision-named ResNet state_dict."""
    bottleneck = "layer1.0.conv3.weight" in sd
    depth = [len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    found = [name for name, (block, layers) in ARCHS.items()
             if layers == depth and (block.expansion == 4) == bottleneck]
    if not found:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ConvertError(f"unsupported ResNet: {kind} blocks {depth} per stage; fastmoco builds "
                           + ", ".join(f"{n} {layers}" for n, (_, layers) in ARCHS.items()))
    w = sd["conv1.weight"]  # (width, in_channels, k, k)
    return dict(arch=found[0], width=w.shape[0], in_channels=w.shape[1], stem="imagenet" if w.shape[-1] == 7 else "small")


def backbone_fields(shape: dict) -> dict:
    """The TrainConfig fields a backbone shape fixes (a ViT has no base width or stem)."""
    return {k: shape[k] for k in ("arch", "width", "stem") if k in shape}


def describe(shape: dict) -> str:
    """A backbone shape (``infer_backbone``) in words."""
    if "width" not in shape:  # a ViT
        spec = VITS[shape["arch"]]
        return (f"a {shape['arch']} (patch {spec['patch_size']}, width {spec['embed_dim']}, depth {spec['depth']}, "
                f"{spec['num_heads']} heads) at {shape['image_size']} px")
    return f"a {shape['arch']} of width {shape['width']}, {shape['stem']} stem"


POS_EMBED_ATOL = 1e-5  # a float32 sin-cos table written by another implementation agrees to ~1e-7


def drop_pos_embed(sd: dict, where: str, error) -> dict:
    """``sd`` without its ``pos_embed`` (``where`` names it in messages), refused when the stored table is not the fixed sin-cos one (a learned
    embedding, or one with a class-token entry, which fastmoco's ViTs do not have)."""
    if "pos_embed" not in sd:
        return sd
    pos = sd["pos_embed"]  # (1, 1 + grid^2, width)
    grid = math.isqrt(pos.shape[1] - 1)
    if pos.dim() != 3 or grid * grid != pos.shape[1] - 1:
        raise error(f"{where} is {tuple(pos.shape)}, not (1, 1 + a square grid of patches, width)")
    want = pos_embed_table(grid, grid, pos.shape[2])
    if not torch.allclose(pos.float(), want, atol=POS_EMBED_ATOL, rtol=0):
        worst = (pos.float() - want).abs().max().item()
        raise error(f"{where} is not the fixed 2-D sin-cos embedding (max difference {worst:.3g}); "
                    "fastmoco's ViTs cannot hold a learned position embedding")
    return {k: v for k, v in sd.items() if k != "pos_embed"}
