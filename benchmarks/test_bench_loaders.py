"""Input pipelines side by side in one run: the DALI loader against the torchvision DataLoader (2 workers), the same
v2 recipe and two views per image, on a folder of real-sized JPEGs (224 px crops) and one of small images (32 px
crops). ``python benchmarks/loaders.py`` prints the same comparison as a table, plus one training epoch with each."""
import pytest

pytest.importorskip("nvidia.dali", reason="the loader comparison needs NVIDIA DALI (pip install nvidia-dali-cuda130)")

from fastmoco.data import build_data  # noqa: E402
from fastmoco.train import TrainConfig  # noqa: E402
from loaders import make_folder  # noqa: E402

CASES = {  # name: (images, smallest side, largest side, crop, batch)
    "jpeg 300-500 px -> 224": (64, 300, 500, 224, 32),
    "jpeg 32-48 px -> 32": (512, 32, 48, 32, 128),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    return {name: make_folder(str(root / str(i)), n, lo, hi, seed=i)
            for i, (name, (n, lo, hi, _, _)) in enumerate(CASES.items())}


@pytest.mark.parametrize("loader", ["dali", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_loader_images_per_s(benchmark, folders, case, loader):
    n, _, _, size, batch = CASES[case]
    cfg = TrainConfig(data=folders[case], loader=loader, image_size=size, batch_size=batch, workers=2,
                      preset="v2", bn_splits=1).resolved()
    data = build_data(cfg, "cpu")
    epoch = iter(range(1, 1000))

    def one_epoch():
        return sum(v1.shape[0] for v1, _ in data.epoch(next(epoch)))

    one_epoch()  # warm-up: workers, pipeline, page cache
    benchmark.group = f"loader, {case}, two views per image"
    images = benchmark.pedantic(one_epoch, rounds=3, iterations=1)
    benchmark.extra_info["images_per_s(min)"] = round(images / benchmark.stats.stats.min, 1)
