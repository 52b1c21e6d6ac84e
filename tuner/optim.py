"""The seven optimizers, with PyTorch's update rules, names and defaults (spec section 1).

``make_optimizer(name, **hparams)`` returns an object whose ``step(W, grad, lr)`` applies one
update to ``W`` in place and returns it. ``lr`` is this update's learning rate (a Python float,
from a schedule); state (moment buffers, the 1-based step counter ``k``) lives in the object.
``grad`` is the gradient of the mini-batch *mean* loss and is never modified. float32 weights
stay float32: every scalar is a Python float (NEP 50).

| name     | torch equivalent                                   |
|----------|----------------------------------------------------|
| sgd      | SGD(momentum=0)                                    |
| momentum | SGD(momentum=0.9, dampening=0)                     |
| nesterov | SGD(momentum=0.9, nesterov=True)                   |
| adagrad  | Adagrad                                            |
| rmsprop  | RMSprop                                            |
| adam     | Adam                                               |
| adamw    | AdamW (weight_decay=1e-2, decoupled)               |

``momentum`` and ``nesterov`` default to ``momentum=0.9`` (CS231n) rather than torch SGD's 0,
which would make them plain SGD.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np


class Optimizer(Protocol):
    def step(self, W: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray: ...


class SGD:
    """``torch.optim.SGD`` (spec 1.1).

    ``buf = g`` on the first step (no dampening), then ``buf = mu*buf + (1-dampening)*g``;
    the update direction is ``g + mu*buf`` (Nesterov) or ``buf``; ``W -= lr * d``.
    """

    def __init__(self, *, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, maximize: bool = False) -> None:
        _check_range("momentum", momentum, 0.0, 1.0)
        _check_range("dampening", dampening, 0.0, 1.0)
        _check_nonneg("weight_decay", weight_decay)
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov, self.maximize = float(weight_decay), nesterov, maximize
        self.buf: np.ndarray | None = None

    def step(self, W: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        g = _prepare_grad(W, grad, self.maximize, self.weight_decay)
        mu = self.momentum
        if mu != 0.0:
            if self.buf is None:
                self.buf = np.array(g, copy=True)
            else:
                self.buf *= mu
                self.buf += (1.0 - self.dampening) * g
            d = g + mu * self.buf if self.nesterov else self.buf
        else:
            d = g
        W -= lr * d
        return W


class Adagrad:
    """``torch.optim.Adagrad`` (spec 1.2).

    ``clr = lr / (1 + (k-1)*lr_decay)``; ``G += g*g``; ``W -= clr * g / (sqrt(G) + eps)``.
    """

    def __init__(self, *, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 maximize: bool = False) -> None:
        _check_nonneg("lr_decay", lr_decay)
        _check_nonneg("weight_decay", weight_decay)
        _check_nonneg("initial_accumulator_value", initial_accumulator_value)
        _check_positive("eps", eps)
        self.lr_decay, self.weight_decay = float(lr_decay), float(weight_decay)
        self.initial_accumulator_value, self.eps = float(initial_accumulator_value), float(eps)
        self.maximize = maximize
        self.k = 0
        self.G: np.ndarray | None = None

    def step(self, W: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        if self.G is None:
            self.G = np.full_like(W, self.initial_accumulator_value)
        self.k += 1
        g = _prepare_grad(W, grad, self.maximize, self.weight_decay)
        clr = lr / (1.0 + (self.k - 1) * self.lr_decay)
        self.G += g * g
        denom = np.sqrt(self.G)
        denom += self.eps
        W -= clr * (g / denom)
        return W


class RMSprop:
    """``torch.optim.RMSprop`` (spec 1.3); no bias correction, eps outside the sqrt.

    ``S = alpha*S + (1-alpha)*g*g``; centered: ``Gbar`` lerps to ``g`` and the denominator is
    ``sqrt(S - Gbar**2) + eps``; with momentum ``B = mu*B + g/den; W -= lr*B``.
    """

    def __init__(self, *, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, maximize: bool = False) -> None:
        _check_range("alpha", alpha, 0.0, 1.0)
        _check_positive("eps", eps)
        _check_nonneg("weight_decay", weight_decay)
        _check_range("momentum", momentum, 0.0, 1.0)
        self.alpha, self.eps, self.weight_decay = float(alpha), float(eps), float(weight_decay)
        self.momentum, self.centered, self.maximize = float(momentum), centered, maximize
        self.S: np.ndarray | None = None
        self.Gbar: np.ndarray | None = None
        self.B: np.ndarray | None = None

    def step(self, W: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        if self.S is None:
            self.S = np.zeros_like(W)
            self.Gbar = np.zeros_like(W) if self.centered else None
            self.B = np.zeros_like(W) if self.momentum > 0.0 else None
        g = _prepare_grad(W, grad, self.maximize, self.weight_decay)
        a = self.alpha
        self.S *= a
        self.S += (1.0 - a) * (g * g)
        if self.Gbar is not None:
            self.Gbar += (1.0 - a) * (g - self.Gbar)
            den = np.sqrt(self.S - self.Gbar * self.Gbar)
        else:
            den = np.sqrt(self.S)
        den += self.eps
        if self.B is not None:
            self.B *= self.momentum
            self.B += g / den
            W -= lr * self.B
        else:
            W -= lr * (g / den)
        return W


class Adam:
    """``torch.optim.Adam`` / ``AdamW`` in torch's order of operations (spec 1.4-1.5).

    ``m += (1-b1)*(g-m)``; ``v = b2*v + (1-b2)*g*g``; ``denom = sqrt(v)/sqrt(1-b2**k) + eps``;
    ``W -= (lr/(1-b1**k)) * m/denom``. With ``decoupled_weight_decay`` (AdamW) ``W *= 1 - lr*wd``
    is applied *before* the Adam step; otherwise ``wd*W`` is added to the gradient (Adam + L2).
    """

    def __init__(self, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        b1, b2 = betas
        _check_range("betas[0]", b1, 0.0, 1.0)
        _check_range("betas[1]", b2, 0.0, 1.0)
        _check_positive("eps", eps)
        _check_nonneg("weight_decay", weight_decay)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)
        self.weight_decay, self.amsgrad = float(weight_decay), amsgrad
        self.decoupled, self.maximize = decoupled_weight_decay, maximize
        self.k = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.vmax: np.ndarray | None = None
        self._tmp: np.ndarray | None = None

    def step(self, W: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        if self.m is None:
            self.m, self.v, self._tmp = np.zeros_like(W), np.zeros_like(W), np.empty_like(W)
            self.vmax = np.zeros_like(W) if self.amsgrad else None
        m, v, tmp = self.m, self.v, self._tmp
        assert v is not None and tmp is not None
        self.k += 1
        g = -grad if self.maximize else grad
        if self.weight_decay != 0.0:
            if self.decoupled:
                W *= 1.0 - lr * self.weight_decay
            else:
                g = g + self.weight_decay * W
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - self.b1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.b2
        v *= self.b2
        v += tmp
        bc1 = 1.0 - self.b1**self.k
        bc2 = 1.0 - self.b2**self.k
        if self.vmax is not None:
            np.maximum(self.vmax, v, out=self.vmax)
            v = self.vmax
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(bc2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bc1
        W -= tmp
        return W


# name -> (class, fixed constructor arguments, allowed keyword arguments, keyword defaults)
_REGISTRY: dict[str, tuple[type, dict[str, Any], tuple[str, ...], dict[str, Any]]] = {
    "sgd": (SGD, {}, ("weight_decay", "maximize"), {}),
    "momentum": (SGD, {}, ("momentum", "dampening", "weight_decay", "maximize"), {"momentum": 0.9}),
    "nesterov": (SGD, {"nesterov": True}, ("momentum", "dampening", "weight_decay", "maximize"),
                 {"momentum": 0.9}),
    "adagrad": (Adagrad, {}, ("lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                              "maximize"), {}),
    "rmsprop": (RMSprop, {}, ("alpha", "eps", "weight_decay", "momentum", "centered",
                              "maximize"), {}),
    "adam": (Adam, {}, ("betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay",
                        "maximize"), {}),
    "adamw": (Adam, {"decoupled_weight_decay": True}, ("betas", "eps", "weight_decay", "amsgrad",
                                                       "maximize"), {"weight_decay": 1e-2}),
}

OPTIMIZER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_optimizer(name: str, **hparams: Any) -> Optimizer:
    """Create optimizer ``name`` with PyTorch-named hyperparameters.

    Raises ``ValueError`` listing the valid names, or the valid keywords for ``name``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(_REGISTRY)}")
    cls, fixed, allowed, defaults = _REGISTRY[name]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for optimizer {name!r}; "
            f"valid: {', '.join(allowed)}"
        )
    return cls(**{**defaults, **hparams, **fixed})


def _prepare_grad(W: np.ndarray, grad: np.ndarray, maximize: bool,
                  weight_decay: float) -> np.ndarray:
    g = -grad if maximize else grad
    if weight_decay != 0.0:
        g = g + weight_decay * W
    return g


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}), got {value!r}")


def _check_nonneg(name: str, value: float) -> None:
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
