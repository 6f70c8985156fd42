"""Which implementation of the ops a model runs: the fused ones or the references, chosen once."""
from types import SimpleNamespace

from .ema import ema_
from .enqueue import enqueue_
from .infonce import infonce
from .infonce_inbatch import infonce_inbatch
from .reference import ema_reference_, enqueue_reference_, infonce_inbatch_reference, infonce_reference

# the two implementations a model may run: the fused ops, or the pure-PyTorch references (the naive path of the
# original code, for tests and `--ops reference`). ``compiles``: whether the after-step ops are worth one compiled
# graph; the fused ones are, the references stay eager as the original code runs them.
_TABLE = {
    "fused": SimpleNamespace(name="fused", infonce=infonce, infonce_inbatch=infonce_inbatch, ema_=ema_,
                             enqueue_=enqueue_, compiles=True),
    "reference": SimpleNamespace(name="reference", infonce=infonce_reference,
                                 infonce_inbatch=infonce_inbatch_reference, ema_=ema_reference_,
                                 enqueue_=enqueue_reference_, compiles=False),
}
IMPLEMENTATIONS = tuple(_TABLE)


def implementation(name: str) -> SimpleNamespace:
    """The four ops of one implementation, picked once: a model keeps the namespace instead of branching on the
    name at every call."""
    if name not in _TABLE:
        raise ValueError(f"ops must be one of {list(IMPLEMENTATIONS)}, got {name!r}")
    return _TABLE[name]
