"""``fastmoco-shards SRC OUT``: an ImageFolder (or a text file list) as shuffled WebDataset tar shards, each with a
DALI index file, and one manifest.

Written with the standard library's ``tarfile`` (not webdataset's TarWriter): the index needs each member's data
offset, which the archive's position gives as the tar is written, and fixed member metadata (mtime 0, uid 0,
mode 0644) makes a re-run write byte-identical shards.

1. The source is listed (an ImageFolder's class sub-folders, or a list file: one ``PATH [CLASS]`` per line;
   relative paths from the list's folder) and every image is decoded in full, in parallel; files that do not
   decode, or whose format DALI's decoder does not read, are listed with the reason in ``OUT/rejected.txt``
   and not written (DALI cannot skip a failed decode during training).
2. The good files are shuffled (``--seed``) and cut into shards of at most ``--max-count`` samples and
   ``--max-size`` bytes; sample keys are their position in that order, unique across the set.
3. Each shard is written as ``shard-NNNNNN.tar.part`` + its index, then renamed: a ``.tar`` with its ``.idx`` beside
   it is complete, a ``.part`` never looks complete. ``OUT/plan.json`` records what the shards were cut from; a
   re-run with the same source and settings keeps the complete shards and writes the rest (an interrupted
   conversion resumes), other settings restart cleanly (this converter's own files in OUT are replaced).
4. ``manifest.json`` is written last, atomically: a folder with a manifest is a finished conversion.
"""
import hashlib
import json
import os
import tarfile
from multiprocessing import get_all_start_methods, get_context

from PIL import Image
from tqdm import tqdm

from fastmoco.errors import DataError
from ..folder import list_classes
from .manifest import FORMAT, INDEX_SUFFIX, INDEX_VERSION, MANIFEST, PLAN_FILE

# PIL format -> the extension written; the formats DALI's image decoder reads
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "PPM": "ppm"}
LISTED = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
PLAN = PLAN_FILE
REJECTED = "rejected.txt"
SHARD_NAME = "shard-{:06d}"
HEADER_BYTES = 1024  # a member's tar header + padding, at most: counted against --max-size
TAR_BLOCK = 512


def list_source(src: str) -> tuple[list, list | None]:
    """([(path, class index or None)], class names or None) of an ImageFolder root or a list file."""
    if os.path.isdir(src):
        classes = sorted(e.name for e in os.scandir(src) if e.is_dir())
        if not classes:
            raise DataError(f"{src} has no class sub-folders (an ImageFolder: SRC/CLASS/IMAGE)")
        # each real file once, with the class whose folder holds it (link loops included), as the folder loader
        items = list_classes(src, classes, lambda p: p.lower().endswith(LISTED))
        if not items:
            raise DataError(f"{src}: no images in its class sub-folders")
        return items, classes
    if not os.path.isfile(src):
        raise DataError(f"source not found: {src} (an ImageFolder root or a text file listing images)")
    base = os.path.dirname(os.path.abspath(src))
    rows = []
    with open(src) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.strip().split(maxsplit=1)
            if parts:
                path = parts[0] if os.path.isabs(parts[0]) else os.path.join(base, parts[0])
                rows.append((path, parts[1] if len(parts) > 1 else None))
    if not rows:
        raise DataError(f"{src} lists no images")
    labelled = [r[1] is not None for r in rows]
    if any(labelled) and not all(labelled):
        raise DataError(f"{src}: some lines name a class and some do not; give every image a class or none")
    if not any(labelled):
        return [(p, None) for p, _ in rows], None
    classes = sorted({c for _, c in rows})
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[c]) for p, c in rows], classes


def check_image(path: str) -> tuple[str | None, str]:
    """(extension to write, '') for an image that decodes in full in a format DALI reads; (None, reason) else."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except FileNotFoundError:
        return None, "file not found"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        return None, f"does not decode ({type(exc).__name__}: {str(exc)[:80]})"
    if fmt not in FORMATS:
        return None, f"format {fmt}: not one DALI's decoder reads ({', '.join(FORMATS)})"
    return FORMATS[fmt], ""


def cut(items: list, sizes: list, max_count: int, max_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard over the shuffled items: at most max_count samples and max_size bytes (one
    larger image alone makes its own shard)."""
    bounds, start, used = [], 0, 0
    for i, size in enumerate(sizes):
        cost = size + 2 * HEADER_BYTES
        if i > start and (i - start >= max_count or used + cost > max_size):
            bounds.append((start, i))
            start, used = i, 0
        used += cost
    bounds.append((start, len(items)))
    return bounds


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def write_shard(job) -> int:
    """Writes one shard and its index (``job``: out folder, shard number, [(key, path, ext, label)]); returns
    the samples written."""
    out, number, samples = job
    base = os.path.join(out, SHARD_NAME.format(number))
    part = base + ".tar.part"
    lines = []
    with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, path, ext, label in samples:
            with open(path, "rb") as fh:
                data = fh.read()
            members = [(f"{key}.{ext}", ext, data)]
            if label is not None:
                members.append((f"{key}.cls", "cls", str(label).encode()))
            parts = []
            for name, member_ext, blob in members:
                tar.addfile(_tarinfo(name, len(blob)), _Bytes(blob))
                data_offset = tar.offset - -(-len(blob) // TAR_BLOCK) * TAR_BLOCK  # the data, padded, ends here
                parts.append(f"{member_ext} {data_offset} {len(blob)} {name}")
            lines.append(" ".join(parts))
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    idx_tmp = base + INDEX_SUFFIX + ".part"
    with open(idx_tmp, "w") as fh:
        fh.write(f"{INDEX_VERSION} {len(samples)}\n" + "\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(idx_tmp, base + INDEX_SUFFIX)
    os.replace(part, base + ".tar")  # last: a .tar beside its .idx is a complete shard
    return len(samples)


class _Bytes:
    """A read-only file object over bytes (tarfile.addfile reads its data from one)."""

    def __init__(self, blob: bytes):
        self.blob, self.pos = blob, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.blob) if n < 0 else self.pos + n
        out, self.pos = self.blob[self.pos:end], min(end, len(self.blob))
        return out


def _plan_digest(src: str, items: list, settings: dict) -> str:
    h = hashlib.sha256(json.dumps([os.path.abspath(src), settings], sort_keys=True).encode())
    for path, label in items:
        st = os.stat(path) if os.path.exists(path) else None
        h.update(f"{path}\0{label}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def _own_files(out: str) -> list[str]:
    """This converter's files in OUT (what a restart replaces): shards, indexes, partial files, the lists."""
    mine = []
    for name in os.listdir(out):
        if name.startswith("shard-") and name.endswith((".tar", ".tar.part", INDEX_SUFFIX, INDEX_SUFFIX + ".part")):
            mine.append(name)
        elif name in (MANIFEST, PLAN, REJECTED):
            mine.append(name)
    return mine


def _atomic_json(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def convert(src: str, out: str, max_count: int = 1000, max_size: int = 1 << 30, seed: int = 0, workers: int = 0,
            progress: bool = True, log=print) -> dict:
    """Writes OUT's shards, indexes and manifest from SRC; returns the manifest (plus 'kept': shards reused)."""
    import numpy as np

    if max_count < 1 or max_size < 1:
        raise DataError(f"--max-count and --max-size must be positive, got {max_count} and {max_size}")
    items, classes = list_source(src)
    os.makedirs(out, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    # fork (as DataLoader workers start): spawn would import torch again in every worker, ~2 s each
    ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        checks = list(tqdm(pool.imap(check_image, [p for p, _ in items], chunksize=64), total=len(items),
                           desc="checking images", disable=not progress, dynamic_ncols=True))
        good = [(p, label, ext) for (p, label), (ext, _) in zip(items, checks) if ext]
        rejected = [(p, why) for (p, _), (ext, why) in zip(items, checks) if not ext]
        if not good:
            _write_rejected(out, rejected)
            raise DataError(f"{src}: none of its {len(items)} images could be used (the reasons are in "
                            f"{os.path.join(out, REJECTED)})")
        order = np.random.default_rng(seed).permutation(len(good))
        good = [good[i] for i in order]
        bounds = cut(good, [os.path.getsize(p) for p, _, _ in good], max_count, max_size)
        settings = dict(seed=seed, max_count=max_count, max_size=max_size)
        digest = _plan_digest(src, items, settings)
        kept = _prepare_out(out, digest, len(bounds), log)
        _atomic_json(dict(source=os.path.abspath(src), digest=digest, shards=len(bounds), **settings),
                     os.path.join(out, PLAN))
        _write_rejected(out, rejected)
        jobs = [(out, n, [(f"{a + k:09d}", p, ext, label) for k, (p, label, ext) in enumerate(good[a:b])])
                for n, (a, b) in enumerate(bounds) if n not in kept]
        with tqdm(total=len(good), initial=sum(b - a for n, (a, b) in enumerate(bounds) if n in kept),
                  desc="writing shards", disable=not progress, dynamic_ncols=True) as bar:
            for written in pool.imap_unordered(write_shard, jobs):
                bar.update(written)
    manifest = dict(format=FORMAT, shards=[SHARD_NAME.format(n) + ".tar" for n in range(len(bounds))],
                    counts=[b - a for a, b in bounds], samples=len(good), classes=classes, rejected=len(rejected),
                    source=os.path.abspath(src), seed=seed)
    _atomic_json(manifest, os.path.join(out, MANIFEST))
    return dict(manifest, kept=len(kept))


def _write_rejected(out: str, rejected: list) -> None:
    """OUT/rejected.txt: one ``PATH<TAB>REASON`` line per file not written (empty when none was rejected)."""
    tmp = os.path.join(out, REJECTED + ".part")
    with open(tmp, "w") as fh:
        fh.writelines(f"{p}\t{why}\n" for p, why in rejected)
    os.replace(tmp, os.path.join(out, REJECTED))


def _prepare_out(out: str, digest: str, shards: int, log) -> set:
    """The shard numbers already complete in OUT for this plan; OUT cleared of this converter's files when they
    came from another plan (or none is recorded)."""
    plan_path = os.path.join(out, PLAN)
    old = None
    if os.path.isfile(plan_path):
        try:
            with open(plan_path) as fh:
                old = json.load(fh).get("digest")
        except (OSError, ValueError):
            old = None
    mine = _own_files(out)
    if old != digest:
        if mine:
            log(f"{out}: its shards came from another source or other settings; writing them afresh")
        for name in mine:
            os.remove(os.path.join(out, name))
        return set()
    for name in mine:  # a partial file of an interrupted run is rewritten
        if name.endswith(".part"):
            os.remove(os.path.join(out, name))
    return {n for n in range(shards)
            if os.path.isfile(os.path.join(out, SHARD_NAME.format(n) + ".tar"))
            and os.path.isfile(os.path.join(out, SHARD_NAME.format(n) + INDEX_SUFFIX))}
