"""Projection heads: MoCo v1's linear layer, MoCo v2's two-layer MLP, and MoCo v3's MLPs of Linear -> BN -> ReLU
blocks (its projector and predictor)."""
from torch import nn

HEADS = ("linear", "mlp")


def projection_head(kind: str, in_dim: int, out_dim: int = 128) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
    raise ValueError(f"unknown head {kind!r}; choose 'linear' or 'mlp'")


def bn_mlp(layers: int, in_dim: int, hidden: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's MLP: ``layers`` Linear layers without bias; every one but the last is followed by BatchNorm and
    ReLU, the last by a BatchNorm without affine parameters when ``last_bn``. Indices follow the original code's
    (2 layers: 0 Linear, 1 BN, 2 ReLU, 3 Linear[, 4 BN]), so its checkpoints' keys map one to one."""
    if layers < 1:
        raise ValueError(f"an MLP needs >= 1 layer, got {layers}")
    mods = []
    for i in range(layers):
        d_in = in_dim if i == 0 else hidden
        d_out = out_dim if i == layers - 1 else hidden
        mods.append(nn.Linear(d_in, d_out, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*mods)
