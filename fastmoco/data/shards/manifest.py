"""A set of WebDataset tar shards as fastmoco reads it: the shard list with each shard's sample count (the
manifest), and each shard's DALI index file, read only for the shards a process reads.

Layout written by ``fastmoco-shards`` (and read from any tool that writes the same):
- ``shard-000000.tar`` ...: each sample is ``KEY.EXT`` (the image: jpg / png / webp / ...) and ``KEY.cls`` (its
  class index as text, when the source has classes); keys are unique across the set;
- ``shard-000000.idx``: DALI's index format (what its ``wds2idx`` writes): a line ``v1.2 SAMPLES``, then one line
  per sample with ``EXT OFFSET SIZE NAME`` for each member (OFFSET: the member's data, after its 512-byte header);
- ``manifest.json``: ``{"format": "fastmoco-shards/1", "shards": [names], "counts": [samples per shard],
  "samples": N, "classes": [names] or null, "rejected": n}``; shard names relative to the manifest's folder, or
  absolute, or URLs.

``--data`` names a manifest (the file or its folder) or a brace pattern (``/data/shard-{000000..000099}.tar``):
a pattern takes the counts of a manifest in the shards' folder when there is one, else it reads every shard's
index once (fine for thousands of shards; write a manifest for more). The planner needs one count per shard (an
int64 per shard: 8 MB for a million shards), never per-sample data: a process reads the indexes of its own
shards only, when it reaches them.
"""
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from fastmoco.errors import DataError

FORMAT = "fastmoco-shards/1"
MANIFEST = "manifest.json"
INDEX_VERSION = "v1.2"
INDEX_SUFFIX = ".idx"
# what counts as a sample's image member: the last part of its extension, any case (jpg / JPEG / png / webp ...)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


class ShardUrls:
    """The shards' paths, each joined to ``root`` when asked for: ``urls[i]``, ``len(urls)``, slicing."""

    def __init__(self, names: list, root: str):
        self.names, self.root = names, root

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ShardUrls(self.names[i], self.root)
        s = self.names[i]
        return s if "://" in s or s.startswith("/") else os.path.join(self.root, s)

    def __iter__(self):
        return (self[i] for i in range(len(self.names)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


@dataclass
class ShardSet:
    """The shards of a data set: ``urls[i]`` holds ``counts[i]`` samples (int64 array); ``classes`` or None."""
    urls: list
    counts: np.ndarray
    classes: list | None
    root: str

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    @property
    def class_to_idx(self) -> dict:
        return {c: i for i, c in enumerate(self.classes or [])}

    def index_path(self, i: int) -> str:
        return index_path(self.urls[i])

    def first(self, n: int) -> "ShardSet":
        """The first ``n`` samples (whole shards, then the first samples of one); all of them when ``n`` is at
        least the set's size (as an ImageFolder's ``--subset`` takes every image)."""
        if n >= self.samples:
            return self
        ends = np.cumsum(self.counts)  # (S,)
        k = int(np.searchsorted(ends, n, side="left")) + 1
        counts = self.counts[:k].copy()
        counts[-1] -= max(int(ends[k - 1]) - n, 0)
        return ShardSet(self.urls[:k], counts, self.classes, self.root)


def index_path(url: str) -> str:
    return (url[:-len(".tar")] if url.endswith(".tar") else url) + INDEX_SUFFIX


PLAN_FILE = "plan.json"  # what fastmoco-shards writes first into its output folder (the manifest comes last)


def is_shards(data: str) -> bool:
    """Whether ``--data`` names shards (a manifest, its folder, a .tar or a brace pattern) rather than images; a
    folder that fastmoco-shards began to write (its plan, no manifest yet) counts too, so that reading it says
    what is missing."""
    if data.endswith(".json") or data.endswith(".tar") or BRACE.search(data):
        return True
    return os.path.isfile(os.path.join(data, MANIFEST)) or os.path.isfile(os.path.join(data, PLAN_FILE))


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept; several ranges multiply)."""
    m = BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise DataError(f"brace pattern {pattern}: the range {{{m.group(1)}..{m.group(2)}}} is empty")
    width = len(m.group(1))
    return [u for i in range(lo, hi + 1)
            for u in expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]


def read_manifest(path: str) -> ShardSet:
    """The shard set a manifest file (or a folder holding ``manifest.json``) describes, checked."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    try:
        with open(path) as fh:
            man = json.load(fh)
    except FileNotFoundError:
        if os.path.isfile(os.path.join(os.path.dirname(path), PLAN_FILE)):
            raise DataError(f"{os.path.dirname(path)} holds no {MANIFEST}: fastmoco-shards writes it last, so its "
                            "conversion into this folder did not finish; run the same command again to complete "
                            "it") from None
        raise DataError(f"shard manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable shard manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise DataError(f"{path} is not a fastmoco shard manifest (no \"format\": \"{FORMAT}\")")
    shards, counts = man.get("shards"), man.get("counts")
    if not isinstance(shards, list) or not isinstance(counts, list) or len(shards) != len(counts) or not shards:
        raise DataError(f"{path}: \"shards\" and \"counts\" must be lists of the same, non-zero length")
    counts = _counts(path, shards, counts)  # (S,)
    bad = next((s for s in shards if not isinstance(s, str) or not s), None)
    if bad is not None or "" in shards:
        raise DataError(f"{path}: shard names must be non-empty strings, found {bad!r}")
    classes = man.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise DataError(f"{path}: \"classes\" must be a list of class names or null")
    root = os.path.dirname(os.path.abspath(path))
    return ShardSet(ShardUrls(shards, root), counts, classes, root)


def _counts(path: str, shards: list, counts: list) -> np.ndarray:
    """The manifest's sample counts as int64, or a DataError naming the first shard whose count is not a
    non-negative integer (null, a string, a fraction, a boolean)."""
    try:
        arr = np.asarray(counts)
    except ValueError:  # ragged nested lists
        arr = np.asarray(counts, dtype=object)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        k = next(i for i, c in enumerate(counts) if not (isinstance(c, int) and not isinstance(c, bool)))
        raise DataError(f"{path}: shard {shards[k]}'s sample count is {counts[k]!r}, not a whole number")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise DataError(f"{path}: negative sample count for shard {shards[int(np.argmax(arr < 0))]}")
    return arr


def resolve(data: str) -> ShardSet:
    """The shard set ``--data`` names: a manifest, its folder, a .tar, or a brace pattern of .tar files."""
    if not (BRACE.search(data) or data.endswith(".tar")):
        return read_manifest(data)
    urls = [os.path.abspath(u) for u in expand_braces(data)]
    folder = os.path.dirname(urls[0])
    known = {}
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        man = read_manifest(folder)
        known = dict(zip(man.urls, man.counts.tolist()))
        classes = man.classes
    else:
        classes = None
    counts = []
    for u in urls:
        if u in known:
            counts.append(known[u])
        else:  # no manifest entry: the shard's own index says how many samples it holds
            counts.append(read_index_count(index_path(u)))
    return ShardSet(urls, np.asarray(counts, dtype=np.int64), classes, folder)


def read_index_count(path: str) -> int:
    try:
        with open(path) as fh:
            head = fh.readline().split()
    except OSError as exc:
        raise DataError(f"shard index {path} cannot be read ({exc.strerror or exc}); write one with "
                        "fastmoco-shards or DALI's wds2idx") from None
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise DataError(f"{path} is not a DALI index file (its first line should be '{INDEX_VERSION} SAMPLES')")
    return int(head[1])


@dataclass
class SampleRef:
    """Where one sample's members sit in its tar: the image's (name, offset, size), the class member's or None."""
    key: str
    image: tuple | None
    cls: tuple | None


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key runs to the first dot of the file name, the extension is the rest."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


def is_image_ext(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def parse_index(path: str) -> list[SampleRef]:
    """A DALI index file as one SampleRef per sample, in the shard's order."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise DataError(f"shard index {path} cannot be read ({exc.strerror or exc})") from None
    count = read_index_count(path)
    body = [ln for ln in lines[1:] if ln.strip()]
    if len(body) != count:
        raise DataError(f"{path}: the header says {count} samples, the file lists {len(body)}")
    refs = []
    for ln in body:
        parts = ln.split()
        if len(parts) % 4:
            raise DataError(f"{path}: malformed index line {ln[:80]!r} (expected EXT OFFSET SIZE NAME groups)")
        image = cls = None
        key = None
        for ext, off, size, name in zip(parts[0::4], parts[1::4], parts[2::4], parts[3::4]):
            key = key or split_name(name)[0]
            if image is None and is_image_ext(ext):
                image = (name, int(off), int(size))
            elif ext == "cls" and cls is None:
                cls = (name, int(off), int(size))
        refs.append(SampleRef(key, image, cls))
    return refs
