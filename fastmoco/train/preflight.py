"""Checks that need the data's and the machine's facts, run before anything large is allocated: an image size the
network can take, and a memory estimate against what the device has free (instead of an allocator error or the
OOM killer minutes later)."""
import torch

from fastmoco.models import VITS, build_backbone, build_method, is_timm, is_vit
from fastmoco.models.backbones import STEM_STRIDE

from fastmoco.errors import ConfigError

GiB = 2**30


def check_image_size(cfg, image_size: int, flag: str = "--image-size") -> None:
    """A ResNet's last stage must see at least one pixel of the image (the side must reach the network's total
    stride); a ViT's side must be a whole number of patches."""
    what = flag[2:].replace("-", " ")  # "image size", "small crop size"
    if is_vit(cfg.arch):
        patch = VITS[cfg.arch]["patch_size"]
        if image_size < patch or image_size % patch:
            raise ConfigError(f"{what} {image_size} is not a multiple of {cfg.arch}'s patch size {patch}; use "
                              f"{flag} {max(patch, image_size // patch * patch)}")
        return
    if is_timm(cfg.arch):
        _check_timm_input(cfg.arch, image_size, what, flag)
        return
    stride = STEM_STRIDE[cfg.stem] * 8  # the stem, then layer2..layer4 halve the side three times
    if image_size < stride:
        raise ConfigError(f"{what} {image_size} is smaller than the network's total stride {stride} (stem "
                          f"{cfg.stem!r}); use {flag} >= {stride} or a smaller stem (--stem small)")


def _check_timm_input(arch: str, side: int, what: str, flag: str) -> None:
    """timm's models check their own input (a ViT built for 224 px refuses any other size with an assertion deep
    in its forward): one forward on the meta device, before any data or memory, turns that into one line."""
    with torch.device("meta"):
        net = build_backbone(arch, 1, "small", 3)
    try:
        with torch.no_grad():
            net(torch.empty(2, 3, side, side, device="meta"))
    except (AssertionError, RuntimeError, ValueError) as exc:
        said = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        fixed = (getattr(net, "pretrained_cfg", None) or {}).get("input_size")
        hint = f"; it was built for {fixed[-1]} px: use {flag} {fixed[-1]}" if fixed else ""
        raise ConfigError(f"{what} {side} does not fit {arch} ({said}){hint}") from None


def estimate_bytes(cfg, in_channels: int, image_size: int, small_size: int = 0) -> dict:
    """A lower bound of the training memory: the queue (v1/v2), the parameters (query, key, gradient, SGD momentum;
    v3's projector and predictor included) and the query forward's activations kept for the backward (each
    backbone module's output, traced on the meta device), multi-crop's small views included."""
    with torch.device("meta"):
        method = build_method(cfg, in_channels)
    net = method.backbone
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in net.modules() if not list(m.children())]
    views = method.query_views  # query passes per image (2: symmetric v1/v2, v3)
    with torch.no_grad():
        net(torch.empty(cfg.batch_size * views, in_channels, image_size, image_size, device="meta"))
        if cfg.small_crops:
            net(torch.empty(cfg.batch_size * cfg.small_crops, in_channels, small_size, small_size, device="meta"))
    for h in hooks:
        h.remove()
    act_bytes = 2 if cfg.amp else 4
    if is_vit(cfg.arch):  # each block's attention probabilities, (B, heads, T, T), are kept for the backward too
        spec = VITS[cfg.arch]
        tokens = lambda side: (side // spec["patch_size"]) ** 2 + 1  # noqa: E731 patches + the class token
        attn = cfg.batch_size * views * tokens(image_size) ** 2
        if cfg.small_crops:
            attn += cfg.batch_size * cfg.small_crops * tokens(small_size) ** 2
        outputs.append(attn * spec["num_heads"] * spec["depth"])
    params = sum(p.numel() for p in method.parameters())  # query and key encoders (and predictor)
    trained = sum(p.numel() for p in method.query_network().parameters())  # with a gradient and a momentum buffer
    queue = sum(b.numel() for name, b in method.named_buffers() if name == "queue")
    return {"queue": queue * 4, "parameters": 4 * params + 8 * trained, "activations": sum(outputs) * act_bytes}


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: do not refuse


def check_memory(cfg, in_channels: int, image_size: int, device: torch.device, small_size: int = 0) -> None:
    parts = estimate_bytes(cfg, in_channels, image_size, small_size)
    need, free = sum(parts.values()), available_bytes(device)
    if need > free:
        detail = ", ".join(f"{name} {size / GiB:.1f}" for name, size in parts.items())
        raise ConfigError(f"this run needs at least {need / GiB:.1f} GiB ({detail} GiB) but {device.type} has "
                          f"{free / GiB:.1f} GiB free; lower --batch-size, --K or --image-size")
