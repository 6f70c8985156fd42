"""The methods a run can train: one base class, ``Method``, that the training loop, the step, the config, the
pre-flight, the linear protocol and the converters know them by, and the registry ``METHODS`` (name -> class).

A method owns its recipe. Before anything is built (class-level, from a ``TrainConfig``):
- ``presets``: the recipes it offers (preset name -> the TrainConfig fields it fills), with the measurements
  that chose them beside them in its module; ``preset_notes``: one line per preset for ``--help``;
- ``default_preset(arch)``: the preset when only ``--method`` is given; ``paper_preset(vit, head)``: the paper's
  own recipe, for checkpoints imported from the original code;
- ``check_config(cfg)``: its rules over the config (raises ``ConfigError``);
- ``runtime_defaults(cfg, world_size, device_type)`` / ``check_runtime(...)``: its BN policy (Split-BN, SyncBN);
- ``linear_protocol(arch)``: the paper's linear-evaluation recipe for its backbones.
Built (``from_config``), it is an ``nn.Module`` with
- ``encoder_q`` (its ``backbone`` is what kNN, the linear protocol and export use) and ``encoder_k``, the
  momentum encoder; ``query_views``: query passes per image (the pre-flight's activation count);
- ``forward(view_1, view_2, query_network=None, small=None) -> (loss, keys)``: one micro-batch; ``query_network``
  is the DDP-wrapped ``query_network()`` in a distributed run (DDP wants one forward per backward);
- ``query_network()``: a module holding every trained parameter, called with the query batches;
- ``shuffle_across_ranks()``: called once under torchrun without SyncBN (MoCo v1/v2: the cross-rank shuffle-BN);
- ``after_step(keys, m)``: after the optimizer step, with the step's keys (concatenated over its micro-batches, or
  None when the method returns none) and the step's momentum: the EMA, plus the enqueue for v1/v2;
- ``compile_after_step(mode)``: compile what ``after_step`` runs (constant momentum only);
- ``averaged_buffers()``: the float buffers the ranks average after each step (BN running statistics).
It picks the fused or the reference ops once, when built (``fastmoco.ops.implementation``).

A new method is a module in this package with a ``@register``-ed subclass, and one import line in
``fastmoco/models/__init__.py``.
"""
from torch import nn

from fastmoco.errors import ConfigError

METHODS: dict[str, type["Method"]] = {}  # name -> class, filled by @register as the method modules are imported


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: adds a method to ``METHODS`` under its ``name``; preset names stay unique across methods."""
    taken = {p for m in METHODS.values() for p in m.presets}
    if cls.name in METHODS or taken & set(cls.presets):
        raise ValueError(f"method {cls.name!r} or one of its presets {sorted(cls.presets)} is registered already")
    METHODS[cls.name] = cls
    return cls


def need(ok: bool, message: str) -> None:
    """A config rule: ConfigError(message) unless ``ok``."""
    if not ok:
        raise ConfigError(message)


class Method(nn.Module):
    name: str = ""
    about: str = ""  # one line for --help
    presets: dict[str, dict] = {}
    preset_notes: dict[str, str] = {}
    heads: tuple[str, ...] = ()  # the projection heads it trains (TrainConfig.head)
    query_views: int = 1

    # -- the recipe (class-level: decided before anything is built) -------------------------------------------
    @classmethod
    def default_preset(cls, arch: str) -> str:
        raise NotImplementedError

    @classmethod
    def paper_preset(cls, vit: bool, head: str | None = None) -> str:
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg) -> None:
        """The method's rules over a resolved config (every preset field filled)."""

    @classmethod
    def runtime_defaults(cls, cfg, world_size: int, device_type: str) -> dict:
        """``sync_bn`` and ``bn_splits`` when left unset: the method's BN policy for this device and process count."""
        return dict(sync_bn=False, bn_splits=1)

    @classmethod
    def check_runtime(cls, cfg, world_size: int, device_type: str) -> None:
        """The method's rules over the device and process count (after ``runtime_defaults``)."""

    @classmethod
    def linear_protocol(cls, arch: str) -> str:
        """The paper's linear-evaluation recipe for a backbone this method trained (a key of lincls' PROTOCOLS)."""
        return "official"

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "Method":
        raise NotImplementedError

    # -- the built model ---------------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone: what kNN, linear evaluation and export use."""
        return self.encoder_q.backbone

    def shuffle_across_ranks(self) -> None:
        """Under torchrun without SyncBN: the method's cross-rank BN guard, if it has one."""


def preset_table() -> dict[str, dict]:
    """Every registered method's presets, each with its ``method`` field: preset name -> TrainConfig fields."""
    return {name: dict(fields, method=m.name) for m in METHODS.values() for name, fields in m.presets.items()}


def build_method(cfg, in_channels: int) -> Method:
    """The method ``cfg.method`` names, built as ``cfg`` says; ``in_channels`` from the data."""
    return METHODS[cfg.method].from_config(cfg, in_channels)
