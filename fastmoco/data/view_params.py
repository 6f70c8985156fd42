"""The random parameters of one augmented view, drawn for a whole batch at once with NumPy.

The DALI pipelines take every random choice of the v1/v2 recipe from here (fed per batch through external
sources) instead of from DALI's own random operators: a batch's draws then depend only on its generator, seeded
by the batch's position in the epoch (like the torch loader's), so a resumed run reproduces them exactly, and the
pipeline runs no per-sample arithmetic (measured on the 2-core CPU: drawing and mixing the jitter factors with
DALI operators cost ~1 ms of CPU per image, 8 % of the pipeline).
"""
import math

import numpy as np

from .transforms import BLUR_SIGMA, SATURATION, VIEW_PROBS, blur_kernel_size

ASPECT = (3 / 4, 4 / 3)
ERASE_AREA, ERASE_ASPECT = (0.02, 0.2), (0.3, 3.3)


class ViewSpec:
    """One view's recipe: what the two-view graph and the parameter draws need to know."""

    def __init__(self, recipe, size, channels, mean, std, min_scale, strength, hue, erase_p, max_scale=1.0, view=0):
        self.recipe, self.size, self.channels = recipe, size, channels
        self.blur_p, self.solarize_p = VIEW_PROBS[recipe][view]  # v3's two views differ
        self.saturation = SATURATION[recipe] * strength
        self.mean = [255.0 * m for m in mean]  # DALI normalises the uint8 range
        self.std = [255.0 * s for s in std]
        self.min_scale, self.max_scale = min_scale, max_scale
        self.strength, self.hue, self.erase_p = strength, hue, erase_p


def crop_boxes(rng: np.random.Generator, hw: np.ndarray, min_scale: float, attempts: int = 10,
               max_scale: float = 1.0) -> np.ndarray:
    """Random resized crops as torchvision draws them: up to ``attempts`` (area fraction, log aspect) pairs per
    image, the first whose box fits is kept, else the central crop at the nearest allowed aspect. ``hw``: (B, 2)
    image heights and widths; returns (B, 4) boxes (top, left, height, width) in pixels."""
    B = len(hw)
    H, W = hw[:, 0:1].astype(np.float64), hw[:, 1:2].astype(np.float64)  # (B, 1)
    area = H * W * rng.uniform(min_scale, max_scale, (B, attempts))  # (B, attempts)
    ratio = np.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1]), (B, attempts)))
    w, h = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = np.argmax(fits, axis=1)  # (B,) the first attempt that fits
    rows = np.arange(B)
    h, w = h[rows, first], w[rows, first]
    H, W = H[:, 0], W[:, 0]
    top = np.floor(rng.uniform(0, 1, B) * (H - h + 1))
    left = np.floor(rng.uniform(0, 1, B) * (W - w + 1))
    none = ~fits.any(axis=1)  # fallback: the whole image at the nearest allowed aspect, centred
    if none.any():
        r = W[none] / H[none]
        cw = np.where(r < ASPECT[0], W[none], np.where(r > ASPECT[1], np.round(H[none] * ASPECT[1]), W[none]))
        ch = np.where(r < ASPECT[0], np.round(W[none] / ASPECT[0]), H[none])
        h[none], w[none] = ch, cw
        top[none], left[none] = (H[none] - ch) // 2, (W[none] - cw) // 2
    return np.stack([top, left, h, w], axis=1)  # (B, 4)


def gaussian_kernels(sigma: np.ndarray, taps: int) -> np.ndarray:
    """(B, taps) normalised 1-D Gaussian kernels, one per sigma (torchvision's GaussianBlur weights)."""
    r = np.arange(taps) - taps // 2
    k = np.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


def draw(rng: np.random.Generator, hw: np.ndarray, spec: ViewSpec) -> dict:
    """Every random choice of one view for a batch of images of sizes ``hw`` (B, 2), as DALI's arguments."""
    B, f32 = len(hw), np.float32
    top, left, h, w = crop_boxes(rng, hw, spec.min_scale, max_scale=spec.max_scale).T
    H, W = hw[:, 0], hw[:, 1]
    flip = rng.uniform(0, 1, B) < 0.5
    x0, x1 = left / W, (left + w) / W
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)  # roi_end < roi_start: DALI's resize mirrors
    p = {"roi_start": np.stack([top / H, x0], 1).astype(f32), "roi_end": np.stack([(top + h) / H, x1], 1).astype(f32)}

    on = rng.uniform(0, 1, B) < (1.0 if spec.recipe == "v1" else 0.8)  # colour jitter applied or not
    s = spec.strength
    for name, r in (("brightness", s), ("contrast", s), ("saturation", spec.saturation)):
        p[name] = np.where(on, 1.0 + rng.uniform(-r, r, B), 1.0).astype(f32)
    p["hue"] = np.where(on, 360.0 * rng.uniform(-spec.hue, spec.hue, B), 0.0).astype(f32)  # degrees
    if spec.channels == 3:  # random greying p=0.2: saturation 0 leaves the luma, i.e. the grey image
        p["saturation"] *= (rng.uniform(0, 1, B) >= 0.2).astype(f32)

    p["blur"] = rng.uniform(0, 1, B) < spec.blur_p
    k = gaussian_kernels(rng.uniform(*BLUR_SIGMA, B), blur_kernel_size(spec.size))  # (B, taps)
    p["blur_kx"], p["blur_ky"] = k[:, None, :], k[:, :, None]  # separable: a row, then a column

    S = float(spec.size)  # random erasing: one rectangle of 2-20 % of the crop, aspect 0.3-3.3, mid-grey
    p["erase"] = rng.uniform(0, 1, B) < spec.erase_p
    area = rng.uniform(*ERASE_AREA, B)
    ratio = np.exp(rng.uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), B))
    eh = np.clip(np.sqrt(area * ratio) * S, 1, S)
    ew = np.clip(np.sqrt(area / ratio) * S, 1, S)
    p["erase_anchor"] = np.stack([rng.uniform(0, 1, B) * (S - eh), rng.uniform(0, 1, B) * (S - ew)], 1).astype(f32)
    p["erase_shape"] = np.stack([eh, ew], 1).astype(f32)
    if spec.solarize_p > 0:  # drawn last and only where the recipe solarizes: the v1/v2 draws stay as they were
        p["solarize"] = rng.uniform(0, 1, B) < spec.solarize_p
    return p
