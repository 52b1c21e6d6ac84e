"""Optimizers against straightforward re-implementations of spec section 1's pseudo-code.

Each ``ref_*`` below transcribes the spec's ``step(p, g, lr)`` literally (allocating, no in-place
tricks) and is run side by side with ``make_optimizer(...)`` for 300 steps, open loop (random
gradients) and closed loop (gradients of a softmax problem at the current weights), with a
constant and with a changing lr. Criterion (spec 1.7): ``max|W - W_ref| / max|W_ref|`` <= 1e-10
in float64.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tuner.model import softmax_loss
from tuner.optim import OPTIMIZER_NAMES, make_optimizer

STEPS = 300


# --- references, transcribed from spec section 1 -----------------------------------------------

class RefSGD:
    def __init__(self, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.mu, self.dampening, self.wd = momentum, dampening, weight_decay
        self.nesterov = nesterov
        self.buf = None

    def step(self, p, g, lr):
        if self.wd != 0:
            g = g + self.wd * p
        if self.mu != 0:
            if self.buf is None:
                self.buf = g.copy()  # FIRST STEP: buf = g, dampening NOT applied
            else:
                self.buf = self.mu * self.buf + (1 - self.dampening) * g
            d = g + self.mu * self.buf if self.nesterov else self.buf
        else:
            d = g
        return p - lr * d


class RefAdagrad:
    def __init__(self, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        self.lr_decay, self.wd, self.eps = lr_decay, weight_decay, eps
        self.init = initial_accumulator_value
        self.G = None
        self.k = 0

    def step(self, p, g, lr):
        if self.G is None:
            self.G = np.full_like(p, self.init)
        self.k += 1
        if self.wd != 0:
            g = g + self.wd * p
        clr = lr / (1 + (self.k - 1) * self.lr_decay)
        self.G = self.G + g * g
        return p - clr * (g / (np.sqrt(self.G) + self.eps))


class RefRMSprop:
    def __init__(self, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self.alpha, self.eps, self.wd = alpha, eps, weight_decay
        self.mu, self.centered = momentum, centered
        self.S = self.Gbar = self.B = None

    def step(self, p, g, lr):
        if self.S is None:
            self.S, self.Gbar, self.B = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        if self.wd != 0:
            g = g + self.wd * p
        a = self.alpha
        self.S = a * self.S + (1 - a) * g * g
        if self.centered:
            self.Gbar = self.Gbar + (1 - a) * (g - self.Gbar)
            den = np.sqrt(self.S - self.Gbar * self.Gbar) + self.eps
        else:
            den = np.sqrt(self.S) + self.eps
        if self.mu > 0:
            self.B = self.mu * self.B + g / den
            return p - lr * self.B
        return p - lr * (g / den)


class RefAdam:
    def __init__(self, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decoupled_weight_decay=False):
        (self.b1, self.b2), self.eps, self.wd = betas, eps, weight_decay
        self.amsgrad, self.decoupled = amsgrad, decoupled_weight_decay
        self.m = self.v = self.vmax = None
        self.k = 0

    def step(self, p, g, lr):
        if self.m is None:
            self.m, self.v, self.vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        self.k += 1
        if self.wd != 0:
            if self.decoupled:
                p = p * (1 - lr * self.wd)  # AdamW: applied BEFORE the Adam step
            else:
                g = g + self.wd * p  # Adam + L2
        self.m = self.m + (1 - self.b1) * (g - self.m)
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        bc1 = 1 - self.b1**self.k
        bc2 = 1 - self.b2**self.k
        vv = self.v
        if self.amsgrad:
            self.vmax = np.maximum(self.vmax, self.v)
            vv = self.vmax
        denom = np.sqrt(vv) / math.sqrt(bc2) + self.eps  # eps AFTER bias-correcting sqrt(v)
        return p - (lr / bc1) * (self.m / denom)


# case -> (optimizer name, engine keywords, reference factory) for every variant the spec lists
CASES = {
    "sgd": ("sgd", {}, lambda: RefSGD()),
    "sgd+wd": ("sgd", {"weight_decay": 0.05}, lambda: RefSGD(weight_decay=0.05)),
    "momentum": ("momentum", {}, lambda: RefSGD(momentum=0.9)),
    "momentum+dampening": ("momentum", {"momentum": 0.8, "dampening": 0.5},
                           lambda: RefSGD(momentum=0.8, dampening=0.5)),
    "momentum+wd": ("momentum", {"momentum": 0.5, "weight_decay": 0.1},
                    lambda: RefSGD(momentum=0.5, weight_decay=0.1)),
    "nesterov": ("nesterov", {}, lambda: RefSGD(momentum=0.9, nesterov=True)),
    "nesterov+wd": ("nesterov", {"momentum": 0.7, "weight_decay": 0.01},
                    lambda: RefSGD(momentum=0.7, weight_decay=0.01, nesterov=True)),
    "adagrad": ("adagrad", {}, lambda: RefAdagrad()),
    "adagrad+options": ("adagrad", {"lr_decay": 0.01, "weight_decay": 0.02,
                                    "initial_accumulator_value": 0.1, "eps": 1e-3},
                        lambda: RefAdagrad(0.01, 0.02, 0.1, 1e-3)),
    "rmsprop": ("rmsprop", {}, lambda: RefRMSprop()),
    "rmsprop+momentum": ("rmsprop", {"momentum": 0.9}, lambda: RefRMSprop(momentum=0.9)),
    "rmsprop+centered": ("rmsprop", {"centered": True}, lambda: RefRMSprop(centered=True)),
    "rmsprop+centered+momentum+wd": (
        "rmsprop",
        {"alpha": 0.9, "eps": 1e-6, "centered": True, "momentum": 0.5, "weight_decay": 0.01},
        lambda: RefRMSprop(alpha=0.9, eps=1e-6, centered=True, momentum=0.5, weight_decay=0.01)),
    "adam": ("adam", {}, lambda: RefAdam()),
    "adam+betas+eps": ("adam", {"betas": (0.8, 0.99), "eps": 1e-4},
                       lambda: RefAdam(betas=(0.8, 0.99), eps=1e-4)),
    "adam+L2": ("adam", {"weight_decay": 0.1}, lambda: RefAdam(weight_decay=0.1)),
    "amsgrad": ("adam", {"amsgrad": True}, lambda: RefAdam(amsgrad=True)),
    "adamw": ("adamw", {}, lambda: RefAdam(weight_decay=1e-2, decoupled_weight_decay=True)),
    "adamw+wd+amsgrad": ("adamw", {"weight_decay": 0.1, "amsgrad": True},
                         lambda: RefAdam(weight_decay=0.1, amsgrad=True,
                                         decoupled_weight_decay=True)),
    "adam(decoupled)": ("adam", {"weight_decay": 0.1, "decoupled_weight_decay": True},
                        lambda: RefAdam(weight_decay=0.1, decoupled_weight_decay=True)),
}


def lr_sequence(kind, base):
    if kind == "constant":
        return [base] * STEPS
    # a changing lr: warmup then cosine, as the schedules produce (Python floats)
    return [base * min(1.0, (t + 1) / 30) * 0.5 * (1 + math.cos(math.pi * t / STEPS))
            for t in range(STEPS)]


BASE_LR = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02, "adagrad": 0.1, "rmsprop": 1e-3,
           "adam": 1e-2, "adamw": 1e-2}


def rel_diff(W, ref):
    return float(np.max(np.abs(W - ref)) / np.max(np.abs(ref)))


def run_open_loop(case, lr_kind, dtype=np.float64, seed=0):
    name, kwargs, make_ref = CASES[case]
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((17, 5)).astype(dtype)
    grads = [(rng.standard_normal(W0.shape) * rng.uniform(0.1, 3.0)).astype(dtype)
             for _ in range(STEPS)]
    opt, ref = make_optimizer(name, **kwargs), make_ref()
    W, P = W0.copy(), W0.copy()
    for g, lr in zip(grads, lr_sequence(lr_kind, BASE_LR[name]), strict=True):
        g_before = g.copy()
        out = opt.step(W, g, lr)
        assert out is W  # updated in place, and returned
        np.testing.assert_array_equal(g, g_before)  # the gradient is never modified
        P = ref.step(P, g, lr)
    return W, P, opt


@pytest.mark.parametrize("lr_kind", ["constant", "changing"])
@pytest.mark.parametrize("case", CASES)
def test_open_loop_matches_reference(case, lr_kind):
    W, P, _ = run_open_loop(case, lr_kind)
    assert W.dtype == np.float64
    assert rel_diff(W, P) <= 1e-10


@pytest.mark.parametrize("lr_kind", ["constant", "changing"])
@pytest.mark.parametrize("case", CASES)
def test_closed_loop_softmax_matches_reference(case, lr_kind):
    """Gradients come from the current weights (a real training trajectory)."""
    name, kwargs, make_ref = CASES[case]
    rng = np.random.default_rng(1)
    X = np.hstack([rng.standard_normal((64, 12)), np.ones((64, 1))])
    y = rng.integers(0, 4, 64)
    W = 1e-3 * rng.standard_normal((13, 4))
    P = W.copy()
    opt, ref = make_optimizer(name, **kwargs), make_ref()
    for t, lr in enumerate(lr_sequence(lr_kind, BASE_LR[name])):
        batch = slice((t % 4) * 16, (t % 4) * 16 + 16)
        opt.step(W, softmax_loss(W, X[batch], y[batch], 1e-3)[1], lr)
        P = ref.step(P, softmax_loss(P, X[batch], y[batch], 1e-3)[1], lr)
    assert rel_diff(W, P) <= 1e-10


@pytest.mark.parametrize("case", CASES)
def test_float32_stays_float32(case):
    W, P, opt = run_open_loop(case, "changing", dtype=np.float32)
    assert W.dtype == np.float32
    for attr in ("buf", "G", "S", "Gbar", "B", "m", "v", "vmax"):
        state = getattr(opt, attr, None)
        assert state is None or state.dtype == np.float32
    assert rel_diff(W, P) <= 1e-5  # same dtype on both sides


def test_momentum_first_step_is_plain_gradient_despite_dampening():
    """torch's quirk: buf = g on step 1 (no dampening); a textbook buf0 = 0 gives half the step."""
    opt = make_optimizer("momentum", momentum=0.9, dampening=0.5)
    g = np.array([1.0, -2.0])
    W = opt.step(np.zeros(2), g, 0.1)
    np.testing.assert_allclose(W, -0.1 * g, rtol=0, atol=0)
    W = opt.step(W, g, 0.1)  # buf = 0.9*g + 0.5*g = 1.4*g
    np.testing.assert_allclose(W, -0.1 * g - 0.14 * g, rtol=1e-15)


def test_textbook_dampening_drifts_from_torch():
    """A buf0 = 0 implementation differs by ~16-19% after 300 steps (spec 1.1): we are not it."""
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(50) for _ in range(STEPS)]
    opt = make_optimizer("momentum", momentum=0.9, dampening=0.5)
    W, textbook, buf = np.zeros(50), np.zeros(50), np.zeros(50)
    for g in grads:
        opt.step(W, g, 0.01)
        buf = 0.9 * buf + 0.5 * g
        textbook = textbook - 0.01 * buf
    assert rel_diff(textbook, W) > 0.05


def test_nesterov_first_step():
    opt = make_optimizer("nesterov", momentum=0.9)
    g = np.array([1.0, 2.0])
    W = opt.step(np.zeros(2), g, 0.1)  # buf = g; d = g + 0.9*g
    np.testing.assert_allclose(W, -0.1 * 1.9 * g, rtol=1e-15)


def test_adagrad_eps_outside_sqrt_and_lr_decay_uses_k_minus_1():
    opt = make_optimizer("adagrad", eps=0.5, lr_decay=1.0, initial_accumulator_value=3.0)
    g = np.array([1.0])
    W = opt.step(np.zeros(1), g, 1.0)  # clr = 1/(1+0) ; G = 3 + 1 = 4 ; step = 1/(2 + 0.5)
    assert W[0] == pytest.approx(-1 / 2.5, rel=1e-15)
    W = opt.step(W, g, 1.0)  # clr = 1/(1+1) ; G = 5 ; step = 0.5 / (sqrt(5) + 0.5)
    assert W[0] == pytest.approx(-1 / 2.5 - 0.5 / (math.sqrt(5) + 0.5), rel=1e-15)


def test_rmsprop_first_step_is_about_ten_lr():
    """No bias correction: |dW| ~ lr / sqrt(1 - alpha) = 10*lr at alpha = 0.99 (spec 1.3)."""
    opt = make_optimizer("rmsprop")
    W = opt.step(np.zeros(3), np.array([1e-2, -3.0, 50.0]), 1e-3)
    np.testing.assert_allclose(np.abs(W), 1e-2, rtol=1e-5)


def test_adam_eps_after_bias_correction():
    """Tiny gradients expose eps placement (spec 1.4): torch 9.1e-4, eps-hat 2.4e-4."""
    opt = make_optimizer("adam", eps=1e-7)
    W = opt.step(np.zeros(1), np.array([1e-6]), 1e-3)
    expected = 1e-3 * 1e-6 / (1e-6 + 1e-7)  # m/bc1 = g, sqrt(v)/sqrt(bc2) = |g|
    assert -W[0] == pytest.approx(expected, rel=1e-12)
    assert -W[0] == pytest.approx(9.1e-4, rel=1e-2)


def test_adamw_is_adam_with_decoupled_decay_bit_for_bit():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((6, 3)) for _ in range(50)]
    a = make_optimizer("adamw", weight_decay=0.1)
    b = make_optimizer("adam", weight_decay=0.1, decoupled_weight_decay=True)
    Wa, Wb = np.ones((6, 3)), np.ones((6, 3))
    for g in grads:
        a.step(Wa, g, 1e-2)
        b.step(Wb, g, 1e-2)
    np.testing.assert_array_equal(Wa, Wb)


def test_adam_l2_and_adamw_differ_and_decay_comes_first():
    """Adam + L2 sends wd*W through the adaptive normalisation; AdamW shrinks W first (spec 1.5)."""
    W0 = np.array([2.0, -1.0])
    g = np.array([0.5, 0.5])
    adamw = make_optimizer("adamw", weight_decay=0.1)
    W = adamw.step(W0.copy(), g, 0.01)
    # decay before the step: W*(1 - lr*wd) then the first Adam step moves by lr*sign(g)
    np.testing.assert_allclose(W, W0 * (1 - 0.01 * 0.1) - 0.01 * np.sign(g) / (1 + 1e-8 / 0.5),
                               rtol=1e-14)
    l2 = make_optimizer("adam", weight_decay=0.1)
    W = l2.step(W0.copy(), g, 0.01)
    g_l2 = g + 0.1 * W0
    np.testing.assert_allclose(W, W0 - 0.01 * g_l2 / (np.abs(g_l2) + 1e-8), rtol=1e-14)
    # and over a run they end far apart
    rng = np.random.default_rng(4)
    a, b = make_optimizer("adamw", weight_decay=0.1), make_optimizer("adam", weight_decay=0.1)
    Wa, Wb = np.full(20, 3.0), np.full(20, 3.0)
    for _ in range(STEPS):
        g = 0.01 * rng.standard_normal(20)
        a.step(Wa, g, 1e-2)
        b.step(Wb, g, 1e-2)
    assert np.linalg.norm(Wb) < 0.5 * np.linalg.norm(Wa)


def test_maximize_flips_the_gradient():
    for name in OPTIMIZER_NAMES:
        up, down = make_optimizer(name, maximize=True), make_optimizer(name)
        g = np.array([0.3, -0.7])
        np.testing.assert_allclose(up.step(np.ones(2), -g, 0.1), down.step(np.ones(2), g, 0.1),
                                   rtol=1e-15)


def test_defaults_follow_torch_and_cs231n():
    assert make_optimizer("momentum").momentum == 0.9
    assert make_optimizer("nesterov").momentum == 0.9 and make_optimizer("nesterov").nesterov
    assert make_optimizer("sgd").momentum == 0.0
    adagrad = make_optimizer("adagrad")
    assert (adagrad.eps, adagrad.lr_decay, adagrad.initial_accumulator_value) == (1e-10, 0.0, 0.0)
    rms = make_optimizer("rmsprop")
    assert (rms.alpha, rms.eps, rms.momentum, rms.centered) == (0.99, 1e-8, 0.0, False)
    adam = make_optimizer("adam")
    assert (adam.b1, adam.b2, adam.eps) == (0.9, 0.999, 1e-8)
    assert (adam.weight_decay, adam.amsgrad) == (0.0, False)
    adamw = make_optimizer("adamw")
    assert adamw.weight_decay == 1e-2 and adamw.decoupled


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'") as info:
        make_optimizer("lion")
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"):
        assert name in str(info.value)


@pytest.mark.parametrize("name, bad, valid", [
    ("sgd", "momentum", "weight_decay"),
    ("adam", "beta1", "betas"),
    ("adagrad", "alpha", "lr_decay"),
    ("rmsprop", "betas", "centered"),
    ("momentum", "nesterov", "dampening"),
])
def test_unknown_keyword_lists_valid_ones(name, bad, valid):
    with pytest.raises(ValueError, match=f"unknown hyperparameter.*{bad}") as info:
        make_optimizer(name, **{bad: 0.5})
    assert valid in str(info.value)


@pytest.mark.parametrize("kwargs", [{"dampening": 0.5}, {"momentum": 0.0}])
def test_nesterov_needs_momentum_and_no_dampening(kwargs):
    with pytest.raises(ValueError, match="Nesterov"):
        make_optimizer("nesterov", **kwargs)


@pytest.mark.parametrize("name, kwargs", [
    ("momentum", {"momentum": 1.0}),
    ("momentum", {"momentum": -0.1}),
    ("adam", {"betas": (1.0, 0.999)}),
    ("adam", {"eps": 0.0}),
    ("adamw", {"weight_decay": -1.0}),
    ("rmsprop", {"alpha": 1.5}),
    ("adagrad", {"lr_decay": -0.1}),
])
def test_out_of_range_hyperparameters_raise(name, kwargs):
    with pytest.raises(ValueError, match="must be"):
        make_optimizer(name, **kwargs)


# --- optional: parity with torch itself (skipped when torch is not installed) -------------------

TORCH_CASES = {
    "sgd+wd": ("SGD", {"lr": 0.05, "weight_decay": 0.05}),
    "momentum+dampening": ("SGD", {"lr": 0.02, "momentum": 0.8, "dampening": 0.5}),
    "nesterov": ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    "adagrad+options": ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02,
                                    "initial_accumulator_value": 0.1, "eps": 1e-3}),
    "rmsprop+centered+momentum+wd": ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6,
                                                 "centered": True, "momentum": 0.5,
                                                 "weight_decay": 0.01}),
    "adam+L2": ("Adam", {"lr": 1e-2, "weight_decay": 0.1}),
    "amsgrad": ("Adam", {"lr": 1e-2, "amsgrad": True}),
    "adamw": ("AdamW", {"lr": 1e-2}),
}


@pytest.mark.parametrize("case", TORCH_CASES)
def test_matches_torch_when_installed(case):
    torch = pytest.importorskip("torch")
    name, kwargs, _ = CASES[case]
    cls, torch_kwargs = TORCH_CASES[case]
    lrs = lr_sequence("changing", torch_kwargs["lr"])
    rng = np.random.default_rng(5)
    W = rng.standard_normal((17, 5))
    grads = [rng.standard_normal(W.shape) for _ in range(STEPS)]
    p = torch.nn.Parameter(torch.from_numpy(W.copy()))
    topt = getattr(torch.optim, cls)([p], **torch_kwargs)
    opt = make_optimizer(name, **kwargs)
    for g, lr in zip(grads, lrs, strict=True):
        opt.step(W, g, lr)
        for group in topt.param_groups:
            group["lr"] = lr
        p.grad = torch.from_numpy(g.copy())
        topt.step()
    assert rel_diff(W, p.detach().numpy()) <= 1e-10


# --- torch parity without torch: trajectories stored by tests/data/make_torch_reference.py ------

DATA = Path(__file__).parent / "data"


def reference_script():
    """tests/data/make_torch_reference.py as a module (it imports torch only when run)."""
    spec = importlib.util.spec_from_file_location("make_torch_reference",
                                                  DATA / "make_torch_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def torch_reference():
    with np.load(DATA / "torch_reference.npz", allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def test_stored_torch_trajectories_cover_the_torch_cases_and_match_the_script(torch_reference):
    arrays, meta = torch_reference
    script = reference_script()
    assert meta["torch"].startswith("2.13.0")
    # every case of the live torch test is stored, with the same torch class and arguments
    for case, (cls, kwargs) in TORCH_CASES.items():
        stored = meta["cases"][case]
        assert stored["class"] == cls, case
        assert stored["kwargs"] == {k: v for k, v in kwargs.items() if k != "lr"}, case
    # the archive is what the committed script makes (regenerate it after editing the script)
    assert set(meta["cases"]) == set(script.CASES) == set(CASES)  # every variant tested here
    W0, grads = script.inputs()
    np.testing.assert_array_equal(arrays["W0"], W0)
    np.testing.assert_array_equal(arrays["grads"], grads)
    for case, (_, _, base) in script.CASES.items():
        np.testing.assert_array_equal(arrays[f"{case}.lr"], script.lr_sequence(base))
        assert arrays[f"{case}.W"].shape == (script.STEPS, *script.SHAPE)


@pytest.mark.parametrize("case", reference_script().CASES)
def test_matches_stored_torch_trajectories(case, torch_reference):
    """Open loop, float64, a changing lr: every step within 1e-12 (relative) of torch 2.13."""
    arrays, _ = torch_reference
    name, kwargs, _ = CASES[case]
    W = arrays["W0"].copy()
    opt = make_optimizer(name, **kwargs)
    expected = arrays[f"{case}.W"]
    for t, (g, lr) in enumerate(zip(arrays["grads"], arrays[f"{case}.lr"], strict=True)):
        opt.step(W, g, float(lr))  # a Python float, as the schedules give
        assert rel_diff(W, expected[t]) <= 1e-12, f"{case}: step {t + 1}"
    assert not np.array_equal(expected[-1], arrays["W0"])  # the trajectory went somewhere
