"""Sharded data: WebDataset tar shards with DALI index files and a manifest (``manifest``), written by
``fastmoco-shards`` (``writer``), read by (shard, sample) with every kind of bad data skipped and reported
(``reader``). The epoch plan over shards is ``fastmoco.data.plan.ShardPlan``."""
from .manifest import ShardSet, expand_braces, is_shards, parse_index, read_manifest, resolve
from .reader import ShardReader, Skip, SkipReport
from .writer import convert

__all__ = ["ShardReader", "ShardSet", "Skip", "SkipReport", "convert", "expand_braces", "is_shards", "parse_index",
           "read_manifest", "resolve"]
