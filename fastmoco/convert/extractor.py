"""Export a run's backbone: ``export/backbone.pt`` (state_dict with torchvision key names) and
``export/features.pt2`` (a torch.export program: float images in [0, 1], shaped as the dataset stores them, ->
(N, D) features; it resizes, adapts channels and normalises by itself; the batch size is dynamic)."""
import json
import os

import torch
import torch.nn.functional as F

from fastmoco.errors import ConfigError
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.runs.read import load_backbone

INPUT_SPEC = "fastmoco_input.json"  # stored inside features.pt2: the channel count and training size


class FeatureExtractor(torch.nn.Module):
    def __init__(self, backbone, raw_shape, image_size, in_channels, mean, std):
        super().__init__()
        self.backbone = backbone.eval()
        self.raw_shape, self.image_size, self.in_channels = tuple(raw_shape), image_size, in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [0, 1], any H and W -> (N, D)
        x = x * 1.0  # an integer input becomes float here (type promotion at run time), so the check below sees it
        torch._assert_async((x.min() >= 0.0) & (x.max() <= 1.0),
                            "features.pt2 expects float images in [0, 1]; got values outside (uint8 images? divide "
                            "by 255)")
        # always resample: at the training size, bilinear with align_corners=False is the identity
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)


def export_run(run_dir: str, checkpoint: str | None = None) -> dict:
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} is not a directory")
    backbone, cfg, meta = load_backbone(run_dir, checkpoint)
    sd = backbone.state_dict()
    out = os.path.join(run_dir, "export")
    os.makedirs(out, exist_ok=True)
    paths = {"backbone": os.path.join(out, "backbone.pt"), "features": os.path.join(out, "features.pt2")}
    ckpt_io.save_atomic(sd, paths["backbone"])

    raw_shape = meta["raw_shape"] or (meta["in_channels"], meta["image_size"], meta["image_size"])
    extractor = FeatureExtractor(backbone, raw_shape, meta["image_size"], meta["in_channels"], meta["mean"],
                                 meta["std"]).eval()
    example = torch.rand(2, *raw_shape)
    with torch.no_grad():
        dims = {0: torch.export.Dim("batch", min=1, max=1 << 20), 2: torch.export.Dim("height", min=2, max=1 << 14),
                3: torch.export.Dim("width", min=2, max=1 << 14)}
        program = torch.export.export(extractor, (example,), dynamic_shapes={"x": dims})
    tmp = os.path.join(out, "features.tmp.pt2")  # torch.export.save wants the .pt2 suffix
    spec = json.dumps(dict(channels=raw_shape[0], image_size=meta["image_size"]))
    torch.export.save(program, tmp, extra_files={INPUT_SPEC: spec})
    os.replace(tmp, paths["features"])
    return paths


def load_extractor(path: str):
    """``features.pt2`` as a function with its input checked in plain words: a (N, C, H, W) float tensor in
    [0, 1] with the channel count the network was trained on; any N, H and W. (The bare program from
    ``torch.export.load(path).module()`` takes the same input, with torch's shape-guard messages.)"""
    extra = {INPUT_SPEC: ""}
    module = torch.export.load(path, extra_files=extra).module()
    spec = json.loads(extra[INPUT_SPEC]) if extra[INPUT_SPEC] else {}

    def extract(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected images shaped (N, C, H, W), got {x.dim()} dimensions {tuple(x.shape)}")
        if "channels" in spec and x.shape[1] != spec["channels"]:
            raise ValueError(f"this extractor takes {spec['channels']}-channel images, got {x.shape[1]} channels")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {x.dtype} (divide uint8 images by 255)")
        return module(x.float())

    return extract
