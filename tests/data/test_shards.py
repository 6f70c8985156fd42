"""fastmoco-shards and the shard reader: what the converter writes (DALI's own index format, unique keys,
rejected files listed, never a partial shard that looks complete, resumable), and every kind of bad data in a
shard with its defined behaviour."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastmoco.errors import DataError
from fastmoco.data.shards import ShardReader, convert, expand_braces, parse_index, resolve
from fastmoco.data.shards.reader import Skip


def _source(root, n=5):
    """An ImageFolder: lossless PNGs of known pixels, grey / CMYK JPEGs, an RGBA PNG and one undecodable file."""
    rng = np.random.default_rng(0)
    pixels = {}
    for c in ("cat", "dog"):
        os.makedirs(root / c)
        for i in range(n):
            a = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
            pixels[str(root / c / f"{i}.png")] = a
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(root / "cat" / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "CMYK").save(root / "cat" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(root / "dog" / "rgba.png")
    (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8not a jpeg")
    return pixels


@pytest.fixture
def shards(tmp_path):
    pixels = _source(tmp_path / "src")
    out = tmp_path / "out"
    done = convert(str(tmp_path / "src"), str(out), max_count=4, workers=1, progress=False, log=lambda *_: None)
    return out, done, pixels


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return [m.name for m in tar.getmembers()]


def test_the_converter_writes_shards_indexes_and_a_manifest(shards):
    out, done, _ = shards
    man = json.loads((out / "manifest.json").read_text())
    assert man["samples"] == 13 and man["counts"] == [4, 4, 4, 1] and man["classes"] == ["cat", "dog"]
    assert man["rejected"] == 1 and done["kept"] == 0
    rejected = (out / "rejected.txt").read_text().splitlines()
    assert len(rejected) == 1 and rejected[0].startswith(str(out.parent / "src" / "dog" / "bad.jpg") + "\tdoes not decode")
    keys = []
    for name in man["shards"]:
        members = _members(out / name)
        assert len(members) == 2 * man["counts"][man["shards"].index(name)]  # image + class per sample
        keys += [m.split(".")[0] for m in members if not m.endswith(".cls")]
    assert len(keys) == len(set(keys)) == 13  # unique across the whole set
    assert not [p for p in os.listdir(out) if p.endswith(".part")]


def test_the_index_is_what_dalis_wds2idx_writes(shards, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships with DALI: the reference this format must match
    out, done, _ = shards
    for name in done["shards"]:
        ref = tmp_path / "ref.idx"
        with wds2idx.IndexCreator(str(out / name), str(ref), verbose=False) as creator:
            creator.create_index()
        assert ref.read_text() == (out / name.replace(".tar", ".idx")).read_text()


def test_samples_read_back_with_their_pixels_and_classes(shards):
    out, _, pixels = shards
    man = json.loads((out / "manifest.json").read_text())
    s = resolve(str(out))
    reader = ShardReader(s.urls, s.counts)
    by_bytes = {open(p, "rb").read(): (p, a) for p, a in pixels.items()}
    found = 0
    for shard in range(len(s.urls)):
        refs = parse_index(s.index_path(shard))
        for i, ref in enumerate(refs):
            img, label, skipped = reader.read_or_next(shard, i)
            assert img.mode == "RGB" and not skipped  # grey, CMYK and RGBA come out RGB
            blob = reader.member(shard, ref.image)
            if blob in by_bytes:
                path, a = by_bytes[blob]
                np.testing.assert_array_equal(np.asarray(img), a)
                assert man["classes"][label] == os.path.basename(os.path.dirname(path))
                found += 1
    assert found == 10  # every PNG, bit for bit


def test_a_rerun_keeps_complete_shards_and_rewrites_a_partial_one(shards, tmp_path):
    out, done, _ = shards
    before = {n: (out / n).read_bytes() for n in done["shards"]}
    (out / "shard-000001.tar").rename(out / "shard-000001.tar.part")  # as if killed before the final rename
    os.remove(out / "manifest.json")
    again = convert(str(tmp_path / "src"), str(out), max_count=4, workers=1, progress=False, log=lambda *_: None)
    assert again["kept"] == 3 and again["counts"] == done["counts"]
    assert {n: (out / n).read_bytes() for n in done["shards"]} == before  # byte-identical
    assert not (out / "shard-000001.tar.part").exists()
    notes = []
    other = convert(str(tmp_path / "src"), str(out), max_count=5, workers=1, progress=False, log=notes.append)
    assert other["kept"] == 0 and other["counts"] == [5, 5, 3] and "afresh" in notes[0]
    assert not (out / "shard-000003.tar").exists()  # the old plan's extra shard is gone


def test_a_list_file_source_and_its_errors(tmp_path):
    _source(tmp_path / "src")
    lst = tmp_path / "files.txt"
    lst.write_text("src/cat/0.png cat\nsrc/dog/1.png dog\nsrc/dog/bad.jpg dog\n")
    done = convert(str(lst), str(tmp_path / "o1"), workers=1, progress=False)
    assert done["samples"] == 2 and done["classes"] == ["cat", "dog"] and done["rejected"] == 1
    lst.write_text("src/cat/0.png cat\nsrc/dog/1.png\n")
    with pytest.raises(DataError, match="some lines name a class and some do not"):
        convert(str(lst), str(tmp_path / "o2"), workers=1, progress=False)
    lst.write_text("src/dog/bad.jpg\n")
    with pytest.raises(DataError, match="none of its 1 images could be used"):
        convert(str(lst), str(tmp_path / "o3"), workers=1, progress=False)
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.shards", str(tmp_path / "nothing"),
                           str(tmp_path / "o4")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (f"fastmoco-shards: error: source not found: "
                                                            f"{tmp_path / 'nothing'} (an ImageFolder root or a "
                                                            "text file listing images)")


def test_brace_patterns_and_manifest_errors(shards, tmp_path):
    out, _, _ = shards
    assert expand_braces("a-{08..10}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar"]
    s = resolve(str(out / "shard-{000001..000003}.tar"))
    assert s.counts.tolist() == [4, 4, 1] and s.classes == ["cat", "dog"]
    shutil.copytree(out, tmp_path / "bare")
    os.remove(tmp_path / "bare" / "manifest.json")  # no manifest: the indexes give the counts
    assert resolve(str(tmp_path / "bare" / "shard-{000000..000001}.tar")).counts.tolist() == [4, 4]
    (tmp_path / "m.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="is not a fastmoco shard manifest"):
        resolve(str(tmp_path / "m.json"))
    with pytest.raises(DataError, match="cannot be read"):
        resolve(str(tmp_path / "bare" / "shard-{000007..000008}.tar"))


def _reader(out):
    s = resolve(str(out))
    return ShardReader(s.urls, s.counts), s


def test_a_corrupt_member_is_skipped_and_named(shards):
    out, _, _ = shards
    ref = parse_index(str(out / "shard-000000.idx"))[2]
    with open(out / "shard-000000.tar", "r+b") as fh:  # garbage over the image's bytes, same length
        fh.seek(ref.image[1])
        fh.write(b"\x00" * ref.image[2])
    reader, _ = _reader(out)
    with pytest.raises(Skip, match="does not decode"):
        reader.read(0, 2)
    img, _, skipped = reader.read_or_next(0, 2)
    assert skipped == [f"shard-000000.tar:{ref.key} (does not decode (UnidentifiedImageError))"]
    assert img.size == reader.read(0, 3)[0].size  # the next sample stands in


def test_a_truncated_tar_skips_the_samples_past_its_end(shards):
    out, _, _ = shards
    refs = parse_index(str(out / "shard-000001.idx"))
    with open(out / "shard-000001.tar", "r+b") as fh:
        fh.truncate(refs[2].image[1] + 10)  # cut inside sample 2's image
    reader, _ = _reader(out)
    assert reader.read(1, 1)[0].mode == "RGB"  # before the cut: fine
    for i in (2, 3):
        with pytest.raises(Skip, match="truncated shard"):
            reader.read(1, i)
    img, _, skipped = reader.read_or_next(1, 2)  # samples 2 and 3 passed over, shard 2's first sample stands in
    assert img.size == reader.read(2, 0)[0].size
    # only the sample asked for is reported: sample 3 is reported when its own turn comes, so an epoch counts
    # each unreadable sample once (the walk used to report every attempt)
    assert skipped == [f"shard-000001.tar:{refs[2].key} (truncated shard: {refs[2].image[0]} ends past the file's "
                       "end)"]
    assert len(reader.read_or_next(1, 3)[2]) == 1


def test_a_stale_index_and_an_unreadable_shard_skip_the_shard(shards):
    out, _, _ = shards
    shutil.copy(out / "shard-000000.idx", out / "shard-000001.idx")  # an index of other contents
    os.chmod(out / "shard-000002.tar", 0)
    reader, _ = _reader(out)
    with pytest.raises(Skip, match="stale index: the member at offset 512 is '000000004.jpg', the index says "
                                   "'000000000.png'"):
        reader.read(1, 0)
    if os.geteuid() != 0:  # root reads any file
        with pytest.raises(Skip, match="cannot be read"):
            reader.read(2, 0)
    os.remove(out / "shard-000003.idx")
    with pytest.raises(Skip, match="shard index .*shard-000003.idx cannot be read"):
        reader.read(3, 0)


def _write_index(tar_path, idx_path):
    """A DALI index of any tar, written from tarfile's member offsets (what wds2idx does)."""
    from fastmoco.data.shards.manifest import INDEX_VERSION, split_name

    samples = []
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, ext = split_name(m.name)
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
            samples[-1][1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    idx_path.write_text(f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(p) + "\n" for _, p in samples))


def test_a_sample_without_an_image_member_and_multi_dot_names(tmp_path):
    from fastmoco.data.shards.manifest import INDEX_VERSION

    tar_path = tmp_path / "odd.tar"
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png)
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(png, "a.b.JPG.png")  # key 'a', extension 'b.JPG.png': its last part says png
        info = tarfile.TarInfo("b.cls")
        info.size = 1
        import io
        tar.addfile(info, io.BytesIO(b"0"))  # a sample holding only its class
        tar.add(png, "c.WEBP")  # the extension's case does not matter (here: a PNG named .WEBP still decodes)
    _write_index(tar_path, tmp_path / "odd.idx")
    assert (tmp_path / "odd.idx").read_text().startswith(f"{INDEX_VERSION} 3\n")
    refs = parse_index(str(tmp_path / "odd.idx"))
    assert [r.key for r in refs] == ["a", "b", "c"] and refs[0].image[0] == "a.b.JPG.png" and refs[1].image is None
    reader = ShardReader([str(tar_path)], [3])
    assert reader.read(0, 0)[0].getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(Skip, match="no image member"):
        reader.read(0, 1)
    img, _, skipped = reader.read_or_next(0, 1)
    assert skipped == ["odd.tar:b (no image member)"] and img.size == (8, 8)
