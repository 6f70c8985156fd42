"""The optimizers a run can use: SGD with momentum (MoCo v1/v2), LARS (the large-batch optimizer MoCo v3 trains
its ResNets with) and AdamW (its ViTs: torch's betas and eps, weight decay on every parameter).

LARS, as MoCo v3 applies it: for every tensor with more than one dimension (weights), the update is
d = grad + weight_decay * p, scaled by the trust ratio trust_coefficient * ||p|| / ||d|| (1 where either norm is
0); biases and normalisation parameters (ndim <= 1) take the plain gradient, with neither weight decay nor trust
ratio. Then momentum on the scaled update: buf <- momentum * buf + d, p <- p - lr * buf.
"""
import torch

from fastmoco.runs.config import OPTIMIZERS


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"LARS needs lr >= 0, weight_decay >= 0, momentum in [0, 1), trust_coefficient > 0; got "
                             f"{lr}, {weight_decay}, {momentum}, {trust_coefficient}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:  # weights: decay and the trust ratio; biases and BN parameters neither
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    ratio = torch.where((w_norm > 0) & (d_norm > 0), group["trust_coefficient"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))  # a tensor: no host sync on a GPU
                    d = d * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


_BUILD = {  # one per name the config allows (runs/config.OPTIMIZERS)
    "sgd": lambda cfg, params, lr: torch.optim.SGD(params, lr=lr, momentum=cfg.sgd_momentum,
                                                   weight_decay=cfg.weight_decay),
    "lars": lambda cfg, params, lr: LARS(params, lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay),
    "adamw": lambda cfg, params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay),
}
assert set(_BUILD) == set(OPTIMIZERS), "every optimizer the config allows is built here"


def build_optimizer(cfg, params, lr: float) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params`` at ``lr``, with the run's momentum and weight decay."""
    return _BUILD[cfg.optimizer](cfg, params, lr)
