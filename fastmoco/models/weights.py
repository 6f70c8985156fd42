"""Loading a state_dict into a module with one plain-words reason when it does not fit (the first missing,
unexpected or wrongly shaped tensor), instead of torch's multi-line ``Error(s) in loading state_dict``."""
from torch import nn


def _more(keys: list) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def mismatch(module: nn.Module, sd: dict) -> str | None:
    """None if ``sd`` loads into ``module`` strictly, else what is wrong, naming the first key concerned."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        return f"missing key {missing[0]}{_more(missing)}"
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        return f"unexpected key {unexpected[0]}{_more(unexpected)}"
    wrong = [k for k in own if tuple(getattr(sd[k], "shape", ())) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        return (f"size mismatch for {k}: the file holds {tuple(getattr(sd[k], 'shape', ()))}, this model needs "
                f"{tuple(own[k].shape)}{_more(wrong)}")
    return None


def load_exactly(module: nn.Module, sd: dict, what: str, error=ValueError, target: str = "this model") -> None:
    """``module.load_state_dict(sd)`` (strict), or ``error("<what> does not fit <target> (<reason>)")``."""
    problem = mismatch(module, sd)
    if problem:
        raise error(f"{what} does not fit {target} ({problem})")
    module.load_state_dict(sd)
