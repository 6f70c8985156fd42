"""NVIDIA DALI input pipelines: each image decoded once, then cropped and augmented into two views (plus
multi-crop's small views when asked for).

Two sources feed the same view graph (``_graph``):
- an ImageFolder through ``fn.readers.file`` (its ``file_list`` rewritten for each epoch) and ``fn.decoders.image``
  (``device="mixed"``, i.e. nvJPEG on the GPU, when training on CUDA; the CPU decoder otherwise);
- in-memory uint8 images (Fashion-MNIST) through an external source.

Order and sharding come from the loop's epoch plan (``EpochPlan.plan``: one order per (seed, epoch), each rank its
slices), handed to DALI as this rank's file list, so both loaders see the same images in the same batches, a
resumed run continues the uninterrupted run's order and the last partial step is dropped the same way. Every random
choice (crop box, flip, jitter factors, greying, blur, erasing) is drawn by ``view_params.draw`` from a generator
seeded by the micro-batch's position in the epoch and fed to the graph through external sources, so a fixed seed
reproduces every batch, wherever a run resumes.

DALI has no random-apply, so the recipe's probabilistic steps are written two ways (both exact):
- colour jitter (p=0.8 in v2) and random greying (p=0.2): **per-sample parameter mixing**: a sample that is not
  jittered gets the identity parameters (factor 1, hue shift 0); greying is saturation 0, which in DALI's YIQ
  colour model leaves exactly the luma, the grey image;
- Gaussian blur (p=0.5 in v2, 1.0 / 0.1 in v3; the torch recipe's kernel, as two 1-D ``fn.filter`` passes), v3's
  solarize (a lookup table) and random
  erasing: **conditional execution** (``enable_conditionals``): only the
  samples whose coin came up go through the operator.
The graph is traced once per source (0.3 s of Python, measured) and serialised; each epoch deserialises it (6 ms).
"""
import os
import re
import tempfile
import warnings

import numpy as np
import torch

from fastmoco.errors import DataError
from .transforms import SOLARIZE_THRESHOLD
from .view_params import ViewSpec, draw

try:
    from nvidia.dali import Pipeline, fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    _IMPORT_ERROR = None
except ImportError as exc:  # the torch loader works without DALI
    _IMPORT_ERROR = exc

__all__ = ["ViewSpec", "DaliEpochs", "available", "check_names", "failed_file", "reason", "warn_replaced"]

INSTALL_HINT = "pip install nvidia-dali-cuda130"
# what a failed decode names in DALI's error text: "Failed to decode sample #3 : /path/to/file.jpg"
_FAILED_FILE = re.compile(r"Failed to decode sample #\d+ : (.+)$", re.MULTILINE)
# per view: (name, dtype, ndim) of the parameters view_params.draw returns
_PARAMS = [("roi_start", "FLOAT", 1), ("roi_end", "FLOAT", 1), ("brightness", "FLOAT", 0), ("contrast", "FLOAT", 0),
           ("saturation", "FLOAT", 0), ("hue", "FLOAT", 0), ("blur", "BOOL", 0), ("blur_kx", "FLOAT", 2),
           ("blur_ky", "FLOAT", 2), ("erase", "BOOL", 0), ("erase_anchor", "FLOAT", 1), ("erase_shape", "FLOAT", 1),
           ("solarize", "BOOL", 0)]
# solarize as a lookup table over the uint8 values: at or above the threshold, v -> 255 - v
_SOLARIZE = [v if v < SOLARIZE_THRESHOLD else 255 - v for v in range(256)]
PREFETCH = 2  # batches DALI prepares ahead of the one the loop is using


def available() -> bool:
    return _IMPORT_ERROR is None


def _used(spec: ViewSpec) -> set:
    """The parameters the graph of ``spec`` reads (DALI drops external sources nothing reads)."""
    used = {"roi_start", "roi_end", "brightness", "contrast"}
    used |= {"saturation", "hue"} if spec.channels == 3 else set()
    used |= {"blur", "blur_kx", "blur_ky"} if spec.recipe != "v1" else set()
    used |= {"solarize"} if spec.solarize_p > 0 else set()
    return used | ({"erase", "erase_anchor", "erase_shape"} if spec.erase_p > 0 else set())


def _view(images, spec: ViewSpec, v: int):
    """View ``v`` of decoded uint8 HWC images -> float HWC, normalised (channels-last for the network)."""
    a = {name: fn.external_source(name=f"{name}{v}", dtype=getattr(types, dtype), ndim=ndim)
         for name, dtype, ndim in _PARAMS if name in _used(spec)}  # outside the branches: each sees its rows
    x = fn.resize(images, roi_start=a["roi_start"], roi_end=a["roi_end"], roi_relative=True,
                  size=(spec.size, spec.size), antialias=True)  # random resized crop + flip in one resampling
    if spec.channels == 1:  # grey images: saturation and hue do nothing there
        x = fn.brightness_contrast(x, brightness=a["brightness"], contrast=a["contrast"])
    else:
        x = fn.color_twist(x, brightness=a["brightness"], contrast=a["contrast"], saturation=a["saturation"],
                           hue=a["hue"])
    if spec.recipe != "v1":
        if a["blur"]:  # conditional execution: only these samples are blurred
            # the Gaussian as two 1-D filters with each sample's kernel (reflect-101 borders, as torchvision):
            # measured 0.07 vs 3.4 ms of CPU per 224 px view for fn.gaussian_blur
            kx, ky = (a["blur_kx"].gpu(), a["blur_ky"].gpu()) if x.device == "gpu" else (a["blur_kx"], a["blur_ky"])
            x = fn.filter(fn.filter(x, kx), ky)  # the filters are regular inputs: on the data's device
    if spec.solarize_p > 0:
        if a["solarize"]:
            x = fn.lookup_table(x, keys=list(range(256)), values=_SOLARIZE, dtype=types.UINT8)
    if spec.erase_p > 0:
        if a["erase"]:
            x = fn.erase(x, anchor=a["erase_anchor"], shape=a["erase_shape"], axis_names="HW", fill_value=128)
    return fn.crop_mirror_normalize(x, mean=spec.mean, std=spec.std, dtype=types.FLOAT, output_layout="HWC")


def _graph(specs: list, file_list: str | None, decode_device: str, gpu: bool, fed_encoded: bool = False,
           **kw) -> str:
    """The serialised graph of one view per spec over a file list (read when the pipeline is built), fed image
    files' bytes (``fed_encoded``) or fed decoded images."""
    @pipeline_def(enable_conditionals=True, **kw)
    def pipe():
        if file_list is not None or fed_encoded:
            if fed_encoded:  # image files' bytes fed by the caller (shards: read by index)
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            else:
                encoded, _ = fn.readers.file(file_list=file_list, random_shuffle=False, name="reader")
            # grey, RGBA -> RGB; upright by the EXIF orientation, like the torch loader (folder.load_rgb)
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, adjust_orientation=True)
        else:
            images = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
            images = images.gpu() if gpu else images
        return tuple(_view(images, spec, v) for v, spec in enumerate(specs))
    return pipe().serialize()


def _names(count: int) -> list[str]:
    return [f"v{v}" for v in range(count)]


def _to_torch(outputs, device, count: int):
    """DALI's (B, H, W, C) float views as (B, C, H, W) tensors in channels-last memory: (view 1, view 2), plus
    the small views as one (S*B, C, s, s) batch, crop-major (small view j of image i at row j*B + i)."""
    views = [outputs[0][k].permute(0, 3, 1, 2).to(device, non_blocking=True) for k in _names(count)]
    return tuple(views) if count == 2 else (views[0], views[1], torch.cat(views[2:]))


class DaliEpochs:
    """Runs one data source's DALI pipeline, an epoch (or the rest of one) at a time."""

    def __init__(self, specs, batch_size: int, device: torch.device, threads: int,
                 small: ViewSpec | None = None, small_crops: int = 0):
        """``specs``: (view 1's ViewSpec, view 2's)."""
        if not available():
            raise DataError(f"the DALI loader needs NVIDIA DALI ({INSTALL_HINT}): {_IMPORT_ERROR}")
        self.specs = list(specs) + [small] * small_crops  # view 1, view 2, then the small views
        self.batch_size, self.device = batch_size, torch.device(device)
        gpu = self.device.type == "cuda"
        self.kw = dict(batch_size=batch_size, num_threads=max(1, threads), prefetch_queue_depth=PREFETCH,
                       device_id=(self.device.index or 0) if gpu else None)
        self._graphs, self._tmp, self._list = {}, None, None

    def _pipeline(self, kind: str):
        if kind not in self._graphs:
            decode = "mixed" if self.device.type == "cuda" else "cpu"
            self._graphs[kind] = _graph(self.specs, self._list if kind == "folder" else None, decode,
                                        self.device.type == "cuda", fed_encoded=kind == "encoded", **self.kw)
        pipe = Pipeline.deserialize(serialized_pipeline=self._graphs[kind], **self.kw)
        pipe.build()
        return pipe

    def _run(self, pipe, batches, iterator_kw, images=None, encoded=False):
        """Feeds each batch's parameters (and its ``images[idx]`` for fed images, its files' bytes ``idx`` for
        fed files) a few batches ahead of DALI's prefetching and yields the views. ``batches``: per micro-batch
        (seed, image sizes (B, 2), idx or bytes or None), any sequence (read only as far as it is fed)."""
        fed, used = 0, [_used(spec) for spec in self.specs]

        def feed_until(k):
            nonlocal fed
            while fed < min(k, len(batches)):
                seed, hw, idx = batches[fed]
                rng = np.random.default_rng(seed)
                if images is not None:
                    pipe.feed_input("images", images[idx])  # (B, H, W, C) uint8
                elif encoded:
                    pipe.feed_input("encoded", idx)  # B files' bytes, (n,) uint8 each
                for v, spec in enumerate(self.specs):  # the small views draw after both views: those stay as
                    for name, value in draw(rng, hw, spec).items():  # they are without multi-crop
                        if name in used[v]:
                            pipe.feed_input(f"{name}{v}", value)
                fed += 1

        feed_until(PREFETCH + 1)
        with warnings.catch_warnings():  # DALI advises a reader_name; fed images have none, their count is exact
            warnings.simplefilter("ignore")
            iterator = DALIGenericIterator([pipe], _names(len(self.specs)), **iterator_kw)
        for i, out in enumerate(iterator):
            feed_until(i + PREFETCH + 2)
            yield _to_torch(out, self.device, len(self.specs))

    def folder(self, files: list[str], sizes: np.ndarray, seeds: list[int]):
        """The views of each file of ``files`` (one micro-batch per seed), in that order; ``sizes``: (N, 2)
        heights and widths of the files."""
        if self._tmp is None:  # the file list the folder graph reads when each epoch's pipeline is built
            self._tmp = tempfile.TemporaryDirectory(prefix="fastmoco-dali-")
            self._list = os.path.join(self._tmp.name, "files.txt")
        with open(self._list, "w") as fh:
            for path in files:  # DALI's file_list: "path label" per line (the label is unused); see check_names
                fh.write(f"{path} 0\n")
        pipe = self._pipeline("folder")
        B = self.batch_size
        batches = [(seed, sizes[j * B:(j + 1) * B], None) for j, seed in enumerate(seeds)]
        yield from self._run(pipe, batches, dict(reader_name="reader", last_batch_policy=LastBatchPolicy.DROP))

    def encoded(self, batches):
        """The views of image files given as bytes: ``batches`` a sequence of (seed, sizes (B, 2), [B arrays of
        uint8]) per micro-batch, read a few batches ahead of DALI."""
        if not len(batches):
            return
        pipe = self._pipeline("encoded")
        kw = dict(size=len(batches) * self.batch_size, last_batch_policy=LastBatchPolicy.DROP)
        yield from self._run(pipe, batches, kw, encoded=True)

    def memory(self, images: np.ndarray, batches: list, seeds: list[int]):
        """The views of ``images[idx]`` for each index array of ``batches`` (uint8 (N, H, W, C) on the host)."""
        if not batches:  # a run resumed at an epoch's last step: nothing left of it
            return
        hw = np.array(images.shape[1:3])[None].repeat(self.batch_size, 0)  # (B, 2): every image the same size
        pipe = self._pipeline("memory")
        kw = dict(size=len(batches) * self.batch_size, last_batch_policy=LastBatchPolicy.DROP)
        yield from self._run(pipe, [(seed, hw, idx) for idx, seed in zip(batches, seeds)], kw, images)


def check_names(paths) -> None:
    """DALI's file list holds one "path label" per line, so a file name with a line break cannot be listed:
    refused when the data is opened, not when an epoch reaches the file."""
    for path in paths:
        if "\n" in path or "\r" in path:
            raise DataError(f"DALI cannot read a file whose name holds a line break: {path!r}; rename it or pass "
                            "--loader torch")


def failed_file(exc: Exception):
    """The file a DALI decode error names, or None when the error is something else."""
    found = _FAILED_FILE.search(str(exc))
    return found.group(1).strip() if found else None


def reason(exc: Exception) -> str:
    """The line of a DALI pipeline error that says what went wrong (the text after "encountered:")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines[:-1]):
        if ln == "encountered:":
            return lines[i + 1]
    return lines[-1] if lines else type(exc).__name__


def warn_replaced(root: str, count: int, epoch: int) -> None:
    if count:
        warnings.warn(f"{root}: {count} image(s) could not be decoded in epoch {epoch + 1} "
                      "and were replaced by the next readable image", stacklevel=3)


def epochs_for(cfg, device, size, small_size, channels, mean, std, strength, hue, erase_p) -> "DaliEpochs":
    """The DALI runner of a source: two views of the recipe, plus ``cfg.small_crops`` small ones."""
    lo, hi = cfg.small_crop_range()
    specs = [ViewSpec(cfg.aug, size, channels, mean, std, cfg.crop_min_scale, strength, hue, erase_p, view=v)
             for v in (0, 1)]  # v3's two views differ (blur, solarize)
    small = ViewSpec(cfg.aug, small_size, channels, mean, std, lo, strength, hue, erase_p, max_scale=hi)
    return DaliEpochs(specs, cfg.batch_size, device, cfg.workers, small, cfg.small_crops)
