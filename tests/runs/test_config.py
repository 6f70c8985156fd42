import pytest

from fastmoco.cli.train import config_from_args
from fastmoco.runs.config import CHOICES, ConfigError, TrainConfig


def test_default_is_the_tuned_fashion_mnist_recipe():
    cfg = config_from_args([])
    assert cfg.preset == "fmnist" and (cfg.head, cfg.T, cfg.aug, cfg.crop_min_scale) == ("linear", 0.07, "v2", 0.9)
    assert cfg.data == "/usr/share/datasets/fashion-mnist"
    assert cfg.image_size == 36  # the 28 px images upsampled (the preset's choice)


def test_presets_fill_unset_fields_only():
    v1 = config_from_args(["--preset", "v1"])
    assert (v1.head, v1.T, v1.m, v1.aug, v1.schedule) == ("linear", 0.07, 0.999, "v1", "step")
    v2 = config_from_args(["--preset", "v2", "--T", "0.5"])
    assert (v2.head, v2.T, v2.m, v2.aug, v2.schedule) == ("mlp", 0.5, 0.999, "v2", "cosine")
    assert (v2.crop_min_scale, v2.erase_p) == (0.2, 0.0)
    assert v1.image_size == v2.image_size == 0  # the papers' presets train at the images' own size
    assert config_from_args(["--image-size", "48"]).image_size == 48
    assert config_from_args(["--image-size", "0"]).image_size == 0  # 0 is a choice, not "unset"


def test_yaml_then_flags_precedence_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nK: 1024\nsymmetric: true\n")
    cfg = config_from_args(["--config", str(path), "--K", "2048"])
    assert cfg.lr == 0.5 and cfg.K == 2048 and cfg.symmetric is True
    cfg.save(str(tmp_path / "saved.yaml"))
    again = config_from_args(["--config", str(tmp_path / "saved.yaml")])
    assert again == cfg


@pytest.mark.parametrize("argv,match", [
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--K", "0"], "K .queue size. must be >= 1"),
    (["--arch", "vgg11"], "unknown arch 'vgg11'"),
    (["--batch-size", "100", "--bn-splits", "8"], "divisible by bn_splits"),
    (["--m", "1.5"], r"m must be in \[0, 1\]"),
    (["--lr-steps", "0.5,x"], "lr_steps"),
    (["--method", "v3", "--K", "65536"], r"^method v3 has no queue .*--K 65536 would change nothing; leave --K out$"),
    (["--method", "v3", "--symmetric"], r"^method v3's loss is always symmetric"),
])
def test_invalid_values(argv, match):
    with pytest.raises(ConfigError, match=match):
        config_from_args(argv)


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_yaml_value_outside_its_registry_is_refused(name):
    """YAML and Python callers bypass argparse's choices: validate() checks the same table."""
    with pytest.raises(ConfigError, match=f"^unknown {name} 'nope'; choose one of"):
        TrainConfig(**{name: "nope"}).resolved()


def test_yaml_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("nope: 1\n")
    with pytest.raises(ConfigError, match="unknown config keys .*: nope"):
        config_from_args(["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ConfigError, match="config file not found"):
        config_from_args(["--config", str(tmp_path / "missing.yaml")])
