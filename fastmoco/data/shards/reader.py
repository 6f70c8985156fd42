"""Reading samples out of tar shards by their index: one ``pread`` per member, no tar parsing on the hot path.

Bad data has one behaviour each, and none of them stops a run or hangs it:
- a member that does not decode (corrupt bytes; grey, CMYK, RGBA, palette and 16-bit images do decode and come
  out RGB), a sample without an image member, a member past the end of a truncated tar, a shard that cannot be
  opened, and a stale index (the tar header at an indexed offset does not name the indexed member, or the file is
  shorter than its index says) make the sample **skipped**: it is replaced by the next readable sample of the set
  and reported at the epoch's end with its shard and key (``SkipReport``);
- a shard whose index lists fewer samples than the manifest counts is refused (``DataError``: the manifest was
  edited or the shard replaced; the plan was made from the wrong counts);
- the search for a replacement passes over a shard that cannot be read (missing, or its index unreadable or
  stale) in one step, so it is bounded by the set's shard count plus the samples of readable shards;
- a member named ``KEY.EXT`` with several dots (``a.b.jpg``) belongs to sample ``a`` with extension ``b.jpg``
  (WebDataset's rule); its image is found by the extension's last part, in any case (jpg / JPEG / png / webp).
"""
import io
import os
import warnings
from collections import OrderedDict

from PIL import Image

from fastmoco.errors import DataError
from ..folder import DECODE_ERRORS, JPEG_TAIL, jpeg_tail_complete, load_rgb, shown_size
from .manifest import index_path, parse_index

TAR_BLOCK = 512
OPEN_INDEXES = 64  # shard indexes a reader keeps parsed (an index of 1,000 samples is ~100 kB parsed)
OPEN_FILES = 16  # tar files a reader keeps open
REPORT_NAMES = 10  # skipped samples named in an epoch's warning; the rest are counted


class Skip(Exception):
    """A sample that cannot be used, with the reason in words; ``whole_shard`` when no sample of its shard can."""

    def __init__(self, why: str, whole_shard: bool = False):
        super().__init__(why)
        self.whole_shard = whole_shard


def _header_name(block: bytes) -> str:
    """The member name a 512-byte ustar header holds (its prefix field joined on)."""
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if block[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


class ShardReader:
    """Reads samples of a shard set by (shard, sample) from any process (DataLoader workers make their own)."""

    def __init__(self, urls: list, counts):
        self.urls, self.counts = urls, counts
        self.total = int(sum(counts))
        self._indexes, self._files = OrderedDict(), OrderedDict()

    def name(self, shard: int) -> str:
        return os.path.basename(self.urls[shard])

    def _index(self, shard: int):
        """(sample refs, file size, problem or None) of a shard, parsed once and checked against its tar."""
        if shard in self._indexes:
            self._indexes.move_to_end(shard)
            return self._indexes[shard]
        url = self.urls[shard]
        problem, refs, size = None, [], 0
        try:
            refs = parse_index(index_path(url))
            size = os.path.getsize(url)
        except DataError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        if problem is None and len(refs) < int(self.counts[shard]):  # more is fine: --subset reads a first part
            raise DataError(f"shard {url}: the manifest counts {int(self.counts[shard])} samples, its index lists "
                            f"{len(refs)}; the counts the epoch was planned from are wrong (re-run fastmoco-shards, "
                            "or correct manifest.json)")
        if problem is None:
            problem = self._check_headers(shard, refs, size)
        self._indexes[shard] = (refs, size, problem)
        if len(self._indexes) > OPEN_INDEXES:
            self._indexes.popitem(last=False)
        return self._indexes[shard]

    def _check_headers(self, shard: int, refs, size: int) -> str | None:
        """The first and last indexed members must be where the index says: else the index is stale."""
        members = [m for r in (refs[:1] + refs[-1:]) for m in (r.image, r.cls) if m is not None]
        for name, off, _ in members:
            if off < TAR_BLOCK or off > size:
                continue  # past the end: a truncated tar, reported per sample
            header = self._pread(shard, TAR_BLOCK, off - TAR_BLOCK)
            if _header_name(header) != name:
                return (f"stale index: the member at offset {off} is {_header_name(header)!r}, the index says "
                        f"{name!r} (re-run fastmoco-shards or DALI's wds2idx)")
        return None

    def _fd(self, shard: int) -> int:
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        fd = os.open(self.urls[shard], os.O_RDONLY)
        self._files[shard] = fd
        if len(self._files) > OPEN_FILES:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def _pread(self, shard: int, size: int, offset: int) -> bytes:
        return os.pread(self._fd(shard), size, offset)

    def member(self, shard: int, ref) -> bytes:
        name, off, size = ref
        data = self._pread(shard, size, off)
        if len(data) != size:
            raise Skip(f"truncated shard: {name} ends past the file's end")
        return data

    def key(self, shard: int, i: int) -> str:
        refs, _, _ = self._index(shard)
        return refs[i].key if i < len(refs) else f"sample {i}"

    def _ref(self, shard: int, i: int):
        """Sample i's index entry, or Skip when its shard or its image member is missing."""
        refs, _, problem = self._index(shard)
        if problem:
            raise Skip(problem, whole_shard=True)
        if refs[i].image is None:
            raise Skip("no image member")
        return refs[i]

    def _bytes(self, shard: int, member) -> bytes:
        try:
            return self.member(shard, member)
        except OSError as exc:
            raise Skip(f"cannot be read ({exc.strerror or exc})") from None

    def _class(self, shard: int, ref) -> int | None:
        if ref.cls is None:
            return None
        try:
            return int(self._bytes(shard, ref.cls).decode().strip())
        except ValueError:
            raise Skip("its .cls member is not an integer") from None

    def read(self, shard: int, i: int) -> tuple[Image.Image, int | None]:
        """(RGB image, class index or None) of sample i of a shard, or Skip."""
        ref = self._ref(shard, i)
        data, label = self._bytes(shard, ref.image), self._class(shard, ref)
        try:
            return load_rgb(io.BytesIO(data)), label
        except DECODE_ERRORS as exc:
            raise Skip(f"does not decode ({type(exc).__name__})") from None

    def encoded(self, shard: int, i: int) -> tuple[bytes, tuple[int, int]]:
        """(the image member's bytes, its (height, width) as shown) of sample i, checked from its header (and a
        JPEG's end marker) without decoding it: what the DALI loader feeds its decoder; or Skip."""
        data = self._bytes(shard, self._ref(shard, i).image)
        try:
            with Image.open(io.BytesIO(data)) as im:
                hw, fmt = shown_size(im), im.format
                im.verify()
        except DECODE_ERRORS as exc:
            raise Skip(f"does not decode ({type(exc).__name__})") from None
        if fmt == "JPEG" and not jpeg_tail_complete(data[-JPEG_TAIL:]):
            raise Skip("truncated JPEG (no end-of-image marker after its last scan)")
        return data, hw

    def label(self, shard: int, i: int) -> int | None:
        """The class index of sample i of a shard (its .cls member alone, no image decoded), or None."""
        refs, _, problem = self._index(shard)
        if problem:
            return None
        try:
            return self._class(shard, refs[i])
        except Skip:
            return None

    def read_or_next(self, shard: int, i: int, how=None):
        """Sample (shard, i) read by ``how`` (default ``read``: (image, label)), or the next readable one after it
        in the set; returns (*what ``how`` returns, [] or ['shard:key (reason)'] when sample (shard, i) itself was
        replaced). Only the requested sample is reported: the unreadable ones passed on the way are reported when
        their own turn in the epoch comes, so an epoch counts each unreadable sample once."""
        how = how or self.read
        first, tried = None, 0
        while tried < self.total:
            try:
                return (*how(shard, i), [first] if first else [])
            except Skip as why:
                first = first or f"{self.name(shard)}:{self.key(shard, i)} ({why})"
                if why.whole_shard:  # nothing in this shard can be read: on to the next shard at once
                    tried += int(self.counts[shard]) - i
                    i = int(self.counts[shard])
                else:
                    tried += 1
                    i += 1
            while i >= int(self.counts[shard]):
                shard, i = (shard + 1) % len(self.counts), 0
        raise DataError(f"none of the {self.total} samples in {len(self.counts)} shard(s) could be read "
                        f"(first: {first or '?'})")

    def close(self):
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


class SkipReport:
    """Skipped samples of one epoch, reported once at its end."""

    def __init__(self):
        self.names, self.count = [], 0

    def add(self, names) -> None:
        for n in names:
            if n:
                self.count += 1
                if len(self.names) < REPORT_NAMES:
                    self.names.append(n)

    def line(self, what: str, how: str) -> str | None:
        """'WHAT: N sample(s) HOW: the first named', or None when nothing was added."""
        if not self.count:
            return None
        more = f" and {self.count - len(self.names)} more" if self.count > len(self.names) else ""
        return f"{what}: {self.count} sample(s) {how}: {'; '.join(self.names)}{more}"

    def warn(self, what: str, epoch: int | None = None) -> None:
        when = f" in epoch {epoch + 1}" if epoch is not None else ""
        line = self.line(what, f"skipped{when} and replaced by the next readable one")
        if line:
            warnings.warn(line, stacklevel=3)
