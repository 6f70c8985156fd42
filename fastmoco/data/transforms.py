"""Augmentation recipes: per-sample ``torchvision.transforms.v2`` pipelines and a batched equivalent.

v1 (MoCo v1): random resized crop, random grey, colour jitter 0.4, flip.
v2 (MoCo v2): random resized crop, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, random grey p=0.2, Gaussian blur
p=0.5 (kernel ~10 % of the image side, at most 13 taps: +-3 sigma of the widest blur), flip.
v3 (MoCo v3): v2's steps with colour jitter (0.4, 0.4, 0.2, 0.1) and asymmetric views: Gaussian blur p=1.0 on
view 1 and p=0.1 on view 2, solarize (pixels >= 128 inverted) p=0.2 on view 2 only.
Grey images (Fashion-MNIST) get brightness/contrast jitter only: saturation, hue and greying do nothing there.

``BatchAugment`` applies the same recipe to a whole uint8 batch with per-sample random parameters (one
affine_grid/grid_sample for every crop+flip, per-sample jitter factors, a grouped convolution for the blur). On
the 2-core CPU it is several times faster than per-sample transforms (benchmarks/RESULTS.md), so in-memory data
(Fashion-MNIST) uses it by default.
"""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the papers' colour jitter on RGB images: brightness, contrast, saturation 0.4; hue 0.4 (v1) or 0.1 (v2)
RGB_JITTER = 0.4
RGB_HUE = {"v1": 0.4, "v2": 0.1, "v3": 0.1}
SATURATION = {"v1": 1.0, "v2": 1.0, "v3": 0.5}  # the saturation jitter as a fraction of the jitter strength
# per recipe, (blur probability, solarize probability) of view 1 and of view 2
VIEW_PROBS = {"v1": ((0.0, 0.0), (0.0, 0.0)), "v2": ((0.5, 0.0), (0.5, 0.0)), "v3": ((1.0, 0.0), (0.1, 0.2))}
AUGS = tuple(VIEW_PROBS)  # the augmentation recipes (TrainConfig.aug)


BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128  # of 255: PIL's ImageOps.solarize default, as the original v3 applies it
# the blur kernel never needs more than +-3 sigma of the widest blur: the weights beyond it sum to < 0.3 %
BLUR_MAX_TAPS = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1


def blur_kernel_size(size: int) -> int:
    """Taps of the v2 Gaussian blur: ~10 % of the image side (odd, at least 3), at most BLUR_MAX_TAPS (13)."""
    return min(max(3, int(0.1 * size) // 2 * 2 + 1), BLUR_MAX_TAPS)


def view_transform(recipe: str, size: int, channels: int, mean, std, min_scale: float = 0.2,
                   max_scale: float = 1.0, view: int = 0) -> v2.Compose:
    """View ``view`` (0 or 1) of a PIL image or uint8 tensor, as torchvision.transforms.v2; the crop covers
    [min_scale, max_scale] of the image's area (multi-crop's small views use a low max_scale)."""
    rgb = channels == 3
    blur_p, solarize_p = VIEW_PROBS[recipe][view]
    jitter = (v2.ColorJitter(RGB_JITTER, RGB_JITTER, RGB_JITTER * SATURATION[recipe], RGB_HUE[recipe]) if rgb
              else v2.ColorJitter(RGB_JITTER, RGB_JITTER))
    steps = [v2.ToImage(), v2.RandomResizedCrop(size, scale=(min_scale, max_scale), antialias=True)]
    if recipe == "v1":
        steps += [v2.RandomGrayscale(0.2)] if rgb else []
        steps += [jitter]
    else:
        steps += [v2.RandomApply([jitter], p=0.8)]
        steps += [v2.RandomGrayscale(0.2)] if rgb else []
        steps += [v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=BLUR_SIGMA)], p=blur_p)]
        steps += [v2.RandomSolarize(SOLARIZE_THRESHOLD, p=solarize_p)] if solarize_p else []
    steps += [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(size: int, mean, std, resize_ratio: float = 1.0, channels: int | None = None) -> v2.Compose:
    """Resize the short side to size * resize_ratio (the linear protocol: 256/224), centre crop, normalise;
    ``channels=3`` turns grey images into three equal channels for an RGB network."""
    return v2.Compose([v2.ToImage(), v2.Resize(round(size * resize_ratio), antialias=True), v2.CenterCrop(size),
                       *_to_channels(channels), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def crop_flip_transform(size: int, mean, std, channels: int | None = None) -> v2.Compose:
    """The linear protocol's training augmentation: random resized crop (torchvision's 8-100 % of the area) and
    horizontal flip."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       *_to_channels(channels), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def _to_channels(channels):
    """Images with the channel count the network takes: three equal channels from grey, or grey from colour."""
    return [v2.RGB()] if channels == 3 else [v2.Grayscale(1)] if channels == 1 else []


class BatchAugment(torch.nn.Module):
    """The v1/v2/v3 recipe's view ``view`` (0 or 1) over a uint8 batch (B, C, H, W) -> float views
    (B, C, size, size), normalised."""

    def __init__(self, recipe: str, size: int, mean, std, min_scale: float = 0.2, jitter: float = 0.4,
                 erase_p: float = 0.0, max_scale: float = 1.0, view: int = 0):
        super().__init__()
        self.blur_p, self.solarize_p = VIEW_PROBS[recipe][view]
        self.saturation = SATURATION[recipe]
        self.recipe, self.size, self.min_scale, self.max_scale = recipe, size, min_scale, max_scale
        self.jitter, self.erase_p = jitter, erase_p
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def crop_maps(self, B: int, g: torch.Generator | None, device=None) -> torch.Tensor:
        """(B, 2, 3) output -> input affine maps of random resized crops (area in [min_scale, max_scale] of the
        image, aspect 3/4-4/3) with random horizontal flips, in [-1, 1] coordinates."""
        u = torch.rand(B, 5, generator=g, device=device)  # (B, 5) uniform draws
        area = self.min_scale + (self.max_scale - self.min_scale) * u[:, 0]
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
        w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # crop width / image width
        h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        cx = (2 * u[:, 2] - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, crop inside the image
        cy = (2 * u[:, 3] - 1) * (1 - h)
        flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
        theta = torch.zeros(B, 2, 3, device=device)  # (B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        return theta

    def _crop_flip(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        B = x.shape[0]
        theta = self.crop_maps(B, g, x.device)  # (B, 2, 3)
        grid = F.affine_grid(theta, [B, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, g, p: float, strength: float) -> torch.Tensor:
        B = x.shape[0]
        u = torch.rand(B, 4, generator=g, device=x.device)
        on = (u[:, 0] < p).float().view(B, 1, 1, 1)
        bright = 1 + strength * (2 * u[:, 1] - 1)
        contrast = 1 + strength * (2 * u[:, 2] - 1)
        y = x * bright.view(B, 1, 1, 1)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * contrast.view(B, 1, 1, 1) + mean
        if x.shape[1] == 3:  # saturation: blend with the grey image; random greying p=0.2
            grey = (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3])
            sat = (1 + self.saturation * strength * (2 * u[:, 3] - 1)).view(B, 1, 1, 1)
            y = (y - grey) * sat + grey
            to_grey = (torch.rand(B, generator=g, device=x.device) < 0.2).float().view(B, 1, 1, 1)
            y = y * (1 - to_grey) + grey * to_grey
        return (on * y + (1 - on) * x).clamp_(0, 1)

    def _blur(self, x: torch.Tensor, g, p: float) -> torch.Tensor:
        B, C, H, W = x.shape
        ks = blur_kernel_size(self.size)
        u = torch.rand(B, 2, generator=g, device=x.device)
        sigma = torch.where(u[:, 0] < p, BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 1],
                            torch.full_like(u[:, 1], 1e-3))  # 1e-3: no blur
        r = torch.arange(ks, device=x.device, dtype=x.dtype) - ks // 2
        k1 = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = (k1 / k1.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, ks) separable kernels
        y = F.pad(x.reshape(1, B * C, H, W), (ks // 2,) * 4, mode="reflect")
        y = F.conv2d(y, k1.view(B * C, 1, ks, 1), groups=B * C)
        y = F.conv2d(y, k1.view(B * C, 1, 1, ks), groups=B * C)
        return y.view(B, C, H, W)

    def _solarize(self, x: torch.Tensor, g, p: float) -> torch.Tensor:
        """Pixels at or above the threshold inverted (x -> 1 - x), with probability p per image."""
        on = (torch.rand(x.shape[0], generator=g, device=x.device) < p).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return torch.where(on & (x >= SOLARIZE_THRESHOLD / 255.0), 1.0 - x, x)

    def _erase(self, x: torch.Tensor, g, p: float) -> torch.Tensor:
        """Random erasing (Zhong et al. 2020): one rectangle of 2-20 % of the area set to grey, with prob. p."""
        B, _, H, W = x.shape
        u = torch.rand(B, 5, generator=g, device=x.device)
        area = 0.02 + 0.18 * u[:, 0]
        ratio = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[:, 1])
        h = (torch.sqrt(area * ratio) * H).clamp(1, H)  # (B,) rectangle sides in pixels
        w = (torch.sqrt(area / ratio) * W).clamp(1, W)
        top = u[:, 2] * (H - h)
        left = u[:, 3] * (W - w)
        rows = torch.arange(H, device=x.device).view(1, H, 1)
        cols = torch.arange(W, device=x.device).view(1, 1, W)
        box = ((rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
               & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1)))  # (B, H, W)
        box &= (u[:, 4] < p).view(B, 1, 1)
        return torch.where(box.unsqueeze(1), 0.5, x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self._crop_flip(x.float() / 255.0, generator)
        if self.recipe == "v1":
            x = self._jitter(x, generator, p=1.0, strength=self.jitter)
        else:
            x = self._jitter(x, generator, p=0.8, strength=self.jitter)
            x = self._blur(x, generator, p=self.blur_p)
        if self.solarize_p > 0:  # drawn only where the recipe solarizes: the v1/v2 draws stay as they were
            x = self._solarize(x, generator, self.solarize_p)
        if self.erase_p > 0:
            x = self._erase(x, generator, self.erase_p)
        return (x - self.mean) / self.std
