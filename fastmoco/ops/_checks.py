"""Argument checks shared by the ops: each raises one ValueError/TypeError whose message names the problem.

They read only shapes, dtypes and devices (never tensor values), so they trace under torch.compile.
"""
import torch

# float64 is accepted too: it is what the tests, gradcheck and opcheck compare against.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def rank(name: str, x: torch.Tensor, ndim: int, shape_doc: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_doc}, got shape {tuple(x.shape)}")


def float_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating dtype (float32, bfloat16, float16, float64), got {x.dtype}")


def same(what: str, names, values) -> None:
    if len(set(values)) > 1:
        listed = ", ".join(f"{n}={v}" for n, v in zip(names, values))
        raise (TypeError if what == "dtype" else ValueError)(f"{what} mismatch: {listed}")


def python_int(name: str, x) -> None:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be a Python int, got {type(x).__name__}")


def number_in(name: str, x, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a Python number, got {type(x).__name__}")
    if not (lo < x if lo_open else lo <= x) or not x <= hi:
        bounds = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must be in {bounds}, got {x}")
    return float(x)


def schema_types(**args) -> None:
    """What an op's schema would refuse in the dispatcher's words (a non-tensor, a non-number, a non-int
    offset), refused here in ours; the public functions run only this, their op's kernel the full check (once
    per call: measured ~2.4 us of ~140 us for a tiny infonce forward and backward)."""
    for name, x in args.items():
        if name == "temperature":
            number_in(name, x, 0.0, float("inf"), lo_open=True)
        elif name == "offset":
            python_int(name, x)
        else:
            tensor(name, x)
