"""ViT backbones in the original MoCo v3 and timm layouts.

fastmoco's ViTs are timm ``VisionTransformer``s with the same parameter names as the original MoCo v3 ViTs
(``cls_token``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``),
except that the fixed sin-cos position embedding is computed in the forward rather than stored: the original (and
timm) keep it as ``pos_embed``, (1, 1 + patches, width), zeros for the class token. Reading a checkpoint checks that
table against the sin-cos one and drops it; writing one adds it for the run's patch grid. The number of attention
heads is not in the weights: a checkpoint's ViT is matched to fastmoco's by patch, width and depth, and takes that
ViT's heads (12 for ViT-S/16 and ViT-B/16, as the original defines them).
"""
from fastmoco.models import VITS, pos_embed_table
from fastmoco.models.shape import drop_pos_embed  # noqa: F401 - read here by the converters

# fastmoco's ViT -> the timm model whose defaults it overrides (timm's ViT-S/16 has 6 heads; the original has 12)
TIMM_NAMES = {"vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224",
              "vit_fmnist": "vit_small_patch16_224"}


def add_pos_embed(sd: dict, image_size: int, patch: int, width: int) -> dict:
    """``sd`` with the ``pos_embed`` table of an image_size px input, as the original and timm store it."""
    grid = image_size // patch
    return {**sd, "pos_embed": pos_embed_table(grid, grid, width)}


def timm_kwargs(arch: str, in_channels: int, image_size: int) -> tuple[str, dict]:
    """(timm model name, ``timm.create_model`` keyword arguments) that build fastmoco's ``arch`` at this input."""
    spec = VITS[arch]
    kw = dict(num_classes=0, in_chans=in_channels, img_size=image_size, patch_size=spec["patch_size"],
              embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"])
    return TIMM_NAMES[arch], kw
