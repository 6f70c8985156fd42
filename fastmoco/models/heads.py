"""Projection heads: MoCo v1's linear layer and MoCo v2's two-layer MLP."""
from torch import nn


def projection_head(kind: str, in_dim: int, out_dim: int = 128) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
    raise ValueError(f"unknown head {kind!r}; choose 'linear' or 'mlp'")
