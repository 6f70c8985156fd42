"""Any ImageFolder (root/class_x/img.png): verified once, corrupt files skipped with one warning and a count.
The up-front check reads each header and, for JPEGs, the file's tail: a JPEG without its end-of-image marker
after its last scan is truncated, and is skipped with the unreadable files by both loaders (DALI would otherwise
train on the partly decoded image). Files that fail only when decoded are replaced during the run by the next
readable image and counted per epoch.

Every image comes out RGB and upright: the EXIF orientation is applied (as DALI's decoder does by default and
``torchvision.io.decode_image(apply_exif_orientation=True)`` does), 16-bit greys are scaled to 8 bits, palettes and
alpha channels resolved. Paths are made absolute, so a relative ``--data`` reads the same files from anywhere."""
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets import ImageFolder

from fastmoco.errors import DataError

# what PIL raises for files it cannot decode (truncated data, unknown formats, broken headers)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer greys scaled to 8-bit "L" by their bit depth (PIL's own convert clips them at 255:
    a white image); transparent palettes resolved; other images as they are."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16).astype(np.float64)
        top = 65535.0 if im.mode != "I" or arr.max() <= 65535 else float(arr.max())
        return Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    return im


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB, upright (its EXIF orientation applied), deep greys scaled (``_to_8bit``)."""
    with Image.open(path) as raw:
        im = ImageOps.exif_transpose(raw)  # upright (a copy when the EXIF orientation asks for a turn)
        return _to_8bit(im).convert("RGB")


def load_8bit(path: str) -> Image.Image:
    """An image file as stored (no EXIF turn: annotations are drawn on the stored pixels), loaded, with deep
    greys scaled to 8 bits; the caller converts to "L" or "RGB"."""
    with Image.open(path) as raw:
        im = _to_8bit(raw)
        im.load()
        return im


EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
EXIF_IN_HEADER = ("JPEG", "MPO", "TIFF", "WEBP")
JPEG_TAIL = 4096  # bytes read from a JPEG's end to find its end-of-image marker


def jpeg_is_complete(path: str) -> bool:
    """Whether a JPEG file's last scan ends with the end-of-image marker (FF D9). Inside entropy-coded data every
    FF byte is followed by 00, so a file cut anywhere in its scans has no FF D9 after its last FF DA (start of
    scan); an EXIF thumbnail's own FF D9 sits before the main image's scans. A file with data appended after its
    image (a phone's "motion photo") can fail this test though complete: the caller decodes those in full."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - JPEG_TAIL))
        tail = fh.read()
    return jpeg_tail_complete(tail)


def jpeg_tail_complete(tail: bytes) -> bool:
    """``jpeg_is_complete`` on the last bytes (``JPEG_TAIL`` of them suffice) of a JPEG held in memory."""
    return tail.rfind(b"\xff\xd9") > tail.rfind(b"\xff\xda")


def _decodes(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.load()  # PIL raises "image file is truncated" where the data ends early
        return True
    except Exception:  # noqa: BLE001
        return False


def shown_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image as it is shown (its EXIF orientation applied)."""
    (w, h), fmt = im.size, im.format
    # EXIF read where it sits in the header (a PNG's getexif() would decode the whole image to find it)
    turned = (fmt in EXIF_IN_HEADER or "exif" in im.info) and im.getexif().get(EXIF_ORIENTATION, 1) in TURNED
    return (w, h) if turned else (h, w)


def _size(path: str):
    """(height, width) of a readable image file as it is shown (EXIF orientation applied), or None for a file
    that is unreadable, broken or truncated."""
    try:
        with Image.open(path) as im:
            hw, fmt = shown_size(im), im.format
            im.verify()
        if fmt == "JPEG" and not jpeg_is_complete(path) and not _decodes(path):
            return None
        return hw
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files
        return None


def walk_once(top: str, seen_dirs: set, skip=frozenset()) -> list[str]:
    """The files under ``top`` (folders in sorted path order, files sorted within each), following symbolic links
    to folders but entering each real folder once (``seen_dirs``, shared over calls) and none of ``skip``: a link
    loop is listed once instead of down to the path-length limit, which branches exponentially."""
    real = os.path.realpath(top)
    if real in seen_dirs or real in skip:
        return []
    seen_dirs.add(real)
    folders = []
    for dirpath, dirnames, files in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen_dirs and real not in skip:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep  # os.walk descends into these only
        folders.append((dirpath, sorted(files)))
    return [os.path.join(d, f) for d, files in sorted(folders) for f in files]


def list_classes(root: str, classes: list, is_image) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``root/CLASS/``, each real file once, with the class whose folder
    really holds it: a link from one class's folder into another's (or up to the root) neither repeats nor
    relabels an image. Files reached only through links to folders outside every class get the class whose folder
    links to them."""
    roots = {os.path.realpath(os.path.join(root, c)): i for i, c in enumerate(classes)}
    seen_dirs, found = set(), {}
    for i, c in enumerate(classes):
        top = os.path.join(root, c)
        for path in walk_once(top, seen_dirs, skip=roots.keys() - {os.path.realpath(top)}):
            real = os.path.realpath(path)
            if real not in found and is_image(path):
                found[real] = (path, _owner(real, roots, i))
    return list(found.values())


def _owner(real: str, roots: dict, default: int) -> int:
    """The class whose real folder holds ``real`` (at any depth), else ``default``."""
    parent = os.path.dirname(real)
    while True:
        if parent in roots:
            return roots[parent]
        up = os.path.dirname(parent)
        if up == parent:
            return default
        parent = up


class _ListedOnce(ImageFolder):
    """torchvision's ImageFolder with ``list_classes`` as its listing (its own walk follows link loops)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        classes = sorted(class_to_idx, key=class_to_idx.get)
        samples = list_classes(str(directory), classes, lambda p: has_file_allowed_extension(p, IMG_EXTENSIONS))
        if not samples and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(classes)}")
        return samples


def image_folder(root: str, transform=None) -> ImageFolder:
    if not os.path.isdir(root):
        raise DataError(f"data path does not exist: {root}")
    root = os.path.abspath(root)
    try:
        ds = _ListedOnce(root, transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise DataError(f"{root} holds no images in class sub-folders ({str(exc).splitlines()[0]})") from None
    ds.image_sizes = {}  # path -> (height, width): the DALI loader draws its crop boxes in pixels
    for path, _ in ds.samples:
        size = _size(path)
        if size is not None:
            ds.image_sizes[path] = size
    good = [s for s in ds.samples if s[0] in ds.image_sizes]
    skipped = len(ds.samples) - len(good)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} unreadable image(s) of {len(ds.samples)}", stacklevel=2)
    if not good:
        raise DataError(f"{root}: none of its {len(ds.samples)} images could be read")
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return ds


class TwoViews(torch.utils.data.Dataset):
    """Wraps an ImageFolder: item = (view 1, view 2), independent draws of ``transforms`` (view 1's, view 2's),
    then (multi-crop) ``small_crops`` draws of ``small`` stacked as (S, C, s, s)."""

    def __init__(self, ds: ImageFolder, transforms, small=None, small_crops: int = 0):
        self.ds, self.small, self.small_crops = ds, small, small_crops
        self.transforms = tuple(transforms)

    def __len__(self):
        return len(self.ds)

    def _load(self, i: int):
        """The image at i, or the next readable one after it; returns (image, unreadable files passed over)."""
        n = len(self.ds.samples)
        for skipped in range(n):
            try:
                return self.ds.loader(self.ds.samples[(i + skipped) % n][0]), skipped
            except DECODE_ERRORS:
                continue
        raise DataError(f"{self.ds.root}: none of its {n} images could be decoded")

    def __getitem__(self, item):
        """``item``: an index, or (index, seed) to draw both views from torch's RNG seeded with ``seed``.
        Returns (view 1, view 2, [small views,] number of undecodable files replaced)."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        img, skipped = self._load(i)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # the caller's RNG stream stays as it was
            if seed is not None:
                torch.manual_seed(seed)
            views = (self.transforms[0](img), self.transforms[1](img))
            if self.small_crops:  # drawn after both views: those stay as they are without multi-crop
                views += (torch.stack([self.small(img) for _ in range(self.small_crops)]),)  # (S, C, s, s)
            return (*views, skipped)
