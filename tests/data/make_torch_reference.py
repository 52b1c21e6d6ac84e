"""Generate tests/data/torch_reference.npz: parameter trajectories of torch.optim optimizers.

tests/test_optim.py::test_matches_stored_torch_trajectories replays these without torch, so the
torch parity of tuner.optim (spec section 1) is checked in every CI run; the live comparison
(test_matches_torch_when_installed) still runs where torch is installed.

Run it, with torch installed, from the repository root (it needs only torch and numpy, never
tuner; keep torch out of the project's environment)::

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 numpy
    /tmp/tv/bin/python tests/data/make_torch_reference.py

and commit the regenerated .npz together with any change to CASES below. The archive holds,
all float64: ``W0`` (5, 3) the start point; ``grads`` (STEPS, 5, 3) a fixed sequence of
gradients of varying scale (open loop: the same gradients whatever the weights);
``<case>.lr`` (STEPS,) the learning rate of every update (warmup, then cosine: a changing lr,
set per step as ``group["lr"] = lr``); ``<case>.W`` (STEPS, 5, 3) the weights after every
update; ``meta`` a JSON string with the torch and numpy versions and the cases' torch classes
and keyword arguments.

Case names match tests/test_optim.py's CASES, which holds tuner's own name and keywords for
each (e.g. ``momentum+dampening`` is ``make_optimizer("momentum", momentum=0.8,
dampening=0.5)`` and ``SGD(momentum=0.8, dampening=0.5)`` here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

STEPS = 50
SHAPE = (5, 3)
SEED = 20260213
OUT = Path(__file__).with_name("torch_reference.npz")

# case -> (torch.optim class, keyword arguments except lr, base lr of the schedule)
CASES: dict[str, tuple[str, dict, float]] = {
    "sgd": ("SGD", {}, 0.05),
    "sgd+wd": ("SGD", {"weight_decay": 0.05}, 0.05),
    "momentum": ("SGD", {"momentum": 0.9}, 0.02),
    "momentum+dampening": ("SGD", {"momentum": 0.8, "dampening": 0.5}, 0.02),
    "momentum+wd": ("SGD", {"momentum": 0.5, "weight_decay": 0.1}, 0.02),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}, 0.02),
    "nesterov+wd": ("SGD", {"momentum": 0.7, "weight_decay": 0.01, "nesterov": True}, 0.02),
    "adagrad": ("Adagrad", {}, 0.1),
    "adagrad+options": ("Adagrad", {"lr_decay": 0.01, "weight_decay": 0.02,
                                    "initial_accumulator_value": 0.1, "eps": 1e-3}, 0.1),
    "rmsprop": ("RMSprop", {}, 1e-3),
    "rmsprop+momentum": ("RMSprop", {"momentum": 0.9}, 1e-3),
    "rmsprop+centered": ("RMSprop", {"centered": True}, 1e-3),
    "rmsprop+centered+momentum+wd": ("RMSprop", {"alpha": 0.9, "eps": 1e-6, "centered": True,
                                                 "momentum": 0.5, "weight_decay": 0.01}, 1e-3),
    "adam": ("Adam", {}, 1e-2),
    "adam+betas+eps": ("Adam", {"betas": (0.8, 0.99), "eps": 1e-4}, 1e-2),
    "adam+L2": ("Adam", {"weight_decay": 0.1}, 1e-2),
    "amsgrad": ("Adam", {"amsgrad": True}, 1e-2),
    "adamw": ("AdamW", {}, 1e-2),
    "adamw+wd+amsgrad": ("AdamW", {"weight_decay": 0.1, "amsgrad": True}, 1e-2),
    "adam(decoupled)": ("Adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}, 1e-2),
}


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """The start point and the gradient sequence (seeded numpy: no torch needed)."""
    rng = np.random.default_rng(SEED)
    W0 = rng.standard_normal(SHAPE)
    grads = np.stack([rng.standard_normal(SHAPE) * rng.uniform(0.1, 3.0) for _ in range(STEPS)])
    return W0, grads


def lr_sequence(base: float) -> list[float]:
    """Linear warmup over 10 updates, then cosine: Python floats, changing every step."""
    return [base * min(1.0, (t + 1) / 10) * 0.5 * (1.0 + math.cos(math.pi * t / STEPS))
            for t in range(STEPS)]


def trajectory(torch, cls: str, kwargs: dict, lrs: list[float], W0: np.ndarray,
               grads: np.ndarray) -> np.ndarray:
    p = torch.nn.Parameter(torch.from_numpy(W0.copy()))
    opt = getattr(torch.optim, cls)([p], lr=lrs[0], **kwargs)
    out = np.empty((STEPS, *SHAPE))
    for t, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.from_numpy(grads[t].copy())
        opt.step()
        out[t] = p.detach().numpy()
    return out


def main() -> None:
    import torch

    torch.set_default_dtype(torch.float64)
    W0, grads = inputs()
    arrays: dict[str, np.ndarray] = {"W0": W0, "grads": grads}
    for case, (cls, kwargs, base) in CASES.items():
        lrs = lr_sequence(base)
        arrays[f"{case}.lr"] = np.array(lrs)
        arrays[f"{case}.W"] = trajectory(torch, cls, kwargs, lrs, W0, grads)
    meta = {"torch": torch.__version__, "numpy": np.__version__, "steps": STEPS,
            "cases": {case: {"class": cls, "kwargs": kwargs, "base_lr": base}
                      for case, (cls, kwargs, base) in CASES.items()}}
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(CASES)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
