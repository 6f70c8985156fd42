"""The methods a run can train, and the one interface the training loop and step know them by.

A method is an ``nn.Module`` with
- ``encoder_q`` (its ``backbone`` is what kNN, the linear protocol and export use) and ``encoder_k``, the
  momentum encoder;
- ``forward(view_1, view_2, query_network=None, small=None) -> (loss, keys)``: one micro-batch; ``query_network``
  is the DDP-wrapped ``query_network()`` in a distributed run (DDP wants one forward per backward);
- ``query_network()``: a module holding every trained parameter, called with the query batches;
- ``after_step(keys, m)``: after the optimizer step, with the step's keys (concatenated over its micro-batches, or
  None when the method returns none) and the step's momentum: the EMA, plus the enqueue for v1/v2;
- ``compile_after_step(mode)``: compile what ``after_step`` runs (constant momentum only);
- ``averaged_buffers()``: the float buffers the ranks average after each step (BN running statistics).
A method with a ``key_shuffle`` attribute takes the cross-rank shuffle-BN under torchrun.
"""
from .moco import MoCo
from .mocov3 import MoCoV3

# "queue": MoCo v1/v2 (negatives from a queue of earlier keys); "v3": in-batch negatives and a predictor
METHODS = {"queue": MoCo, "v3": MoCoV3}


def build_method(cfg, in_channels: int):
    """The method ``cfg.method`` names, built as ``cfg`` says; ``in_channels`` from the data."""
    return METHODS[cfg.method].from_config(cfg, in_channels)
