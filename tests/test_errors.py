"""The one refusal of a value outside its fixed set, and the callers that share it (train, detect, detect's
'random' source)."""
import pytest

from fastmoco.errors import ConfigError, check_choice


def test_check_choice_names_the_setting_the_value_and_the_choices():
    check_choice("norm", "bn", ("bn", "frozen"))
    with pytest.raises(ConfigError, match=r"^unknown norm 'nope'; choose one of \['bn', 'frozen'\]$"):
        check_choice("norm", "nope", ("bn", "frozen"))


def test_none_passes_only_an_optional_setting():
    check_choice("loader", None, ("torch", "dali"), optional=True)
    with pytest.raises(ConfigError, match=r"^unknown loader None; choose one of \['torch', 'dali'\]$"):
        check_choice("loader", None, ("torch", "dali"))


def test_a_dict_registry_lists_its_names():
    with pytest.raises(ConfigError, match=r"^unknown method 'v9'; choose one of \['queue', 'v3'\]$"):
        check_choice("method", "v9", {"queue": object, "v3": object})


@pytest.mark.parametrize("name", ["model", "norm", "resume", "arch", "stem"])
def test_detect_settings_refuse_the_same_way(name):
    from fastmoco.evaluate.detection.settings import DetectSettings

    with pytest.raises(ConfigError, match=f"^unknown {name} 'nope'; choose one of"):
        DetectSettings(**{name: "nope"}).check()


def test_the_random_source_refuses_an_unknown_stem():
    from fastmoco.evaluate.detection.source import load_source

    with pytest.raises(ConfigError, match=r"^unknown stem 'nope'; choose one of \['small', 'small-s2', 'imagenet'\]$"):
        load_source("random", "resnet10", 16, "nope", 1)
    assert load_source("random", "resnet10", 16, None, 1).stem == "small-s2"
