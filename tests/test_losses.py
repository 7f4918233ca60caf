"""Tests for ceexp.losses.

Expected numbers come from hand derivations (in the comments), from float64 numpy references written here
independently of the implementation, from ``F.cross_entropy`` for the gamma = 0 identities, and from autograd
through a plain torch formula for the gradients (the focal losses have a hand-written backward).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ceexp.losses import (
    BrierLoss,
    FocalLoss,
    SampleDependentFocalLoss,
    brier_loss,
    focal_loss,
    sample_dependent_focal_loss,
)

# ---------------------------------------------------------------------------------------------------------
# float64 numpy references


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_reduce(per_sample: np.ndarray, keep: np.ndarray, reduction: str):
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / keep.sum()


def np_true_class(z, y, ignore_index):
    keep = y != ignore_index
    y_safe = np.where(keep, y, 0)
    log_p = np_log_softmax(z)[np.arange(len(y)), y_safe]
    return log_p, keep, y_safe


def np_focal(z, y, gamma, alpha=None, reduction="mean", ignore_index=-100):
    """-alpha_y (1 - p_y)^gamma log p_y; ``gamma`` a number or a per-sample array."""
    log_p, keep, y_safe = np_true_class(z, y, ignore_index)
    weight = np.ones(len(y)) if alpha is None else np.asarray(alpha, dtype=np.float64)[y_safe]
    per_sample = np.where(keep, -weight * (1.0 - np.exp(log_p)) ** gamma * log_p, 0.0)
    return np_reduce(per_sample, keep, reduction)


def np_flsd_gamma(z, y, ignore_index=-100):
    log_p, _, _ = np_true_class(z, y, ignore_index)
    return np.where(np.exp(log_p) < 0.2, 5.0, 3.0)


def np_brier(z, y, reduction="mean", ignore_index=-100):
    keep = y != ignore_index
    y_safe = np.where(keep, y, 0)
    probs = np.exp(np_log_softmax(z))
    onehot = np.eye(z.shape[1])[y_safe]
    per_sample = np.where(keep, ((probs - onehot) ** 2).sum(axis=1), 0.0)
    return np_reduce(per_sample, keep, reduction)


def torch_focal_reference(z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
    """Per-sample focal loss by plain autograd-able torch ops (no ignore_index), for gradient checks."""
    log_p = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    return -((1 - log_p.exp()) ** gamma) * log_p


def assert_close(actual: torch.Tensor, desired: torch.Tensor, rtol: float, atol: float) -> None:
    """Compare tensors through numpy (torch.testing.assert_close costs ~1 s of imports on first use)."""
    assert actual.dtype == desired.dtype and actual.shape == desired.shape
    np.testing.assert_allclose(actual.detach().numpy(), desired.detach().numpy(), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def batch():
    gen = np.random.default_rng(0)
    z = gen.normal(scale=2.0, size=(64, 7))
    y = gen.integers(0, 7, size=64)
    return z, y


def as_torch(z, y, requires_grad=False):
    return torch.tensor(z, dtype=torch.float64, requires_grad=requires_grad), torch.tensor(y, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------
# focal loss


def test_focal_gamma0_is_cross_entropy_hand_value():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 1])
    # -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.239549;  -log(e / (e + 2)) = log(1 + 2 / e) = 0.551444
    hand = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 / math.e)) / 2
    loss = FocalLoss(gamma=0.0)(logits, target)
    assert loss.item() == pytest.approx(0.395495, abs=1e-6)
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-7)


def test_focal_gamma0_alpha_hand_values():
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    # p_y = 1/2 for both samples: losses 0.25 log 2 and 1.0 log 2
    mean = FocalLoss(0.0, alpha=[0.25, 1.0])(logits, target).item()
    total = FocalLoss(0.0, alpha=[0.25, 1.0], reduction="sum")(logits, target).item()
    assert mean == pytest.approx(0.433217, abs=1e-6)
    assert total == pytest.approx(0.866434, abs=1e-6)
    assert total == pytest.approx(1.25 * math.log(2))


def test_focal_float_alpha_binary_equals_sequence(batch):
    z, y = batch
    logits, target = as_torch(z[:, :2], y % 2)
    for reduction in ("none", "mean", "sum"):
        got = FocalLoss(2.0, alpha=0.25, reduction=reduction)(logits, target)
        want = FocalLoss(2.0, alpha=[0.75, 0.25], reduction=reduction)(logits, target)
        assert_close(got, want, rtol=0, atol=0)
    np.testing.assert_allclose(
        focal_loss(logits, target, 2.0, alpha=0.25).item(), np_focal(z[:, :2], y % 2, 2.0, [0.75, 0.25]), rtol=1e-12
    )


def test_focal_float_alpha_needs_two_classes():
    with pytest.raises(ValueError, match=r"`alpha`.*C == 2"):
        FocalLoss(alpha=0.25)(torch.zeros(2, 3), torch.tensor([0, 2]))


def test_focal_alpha_length_must_match_classes():
    message = r"Expected argument `alpha` to have C=3 entries \(one per class\), but got 2"
    with pytest.raises(ValueError, match=message):
        FocalLoss(alpha=[0.5, 0.5])(torch.zeros(2, 3), torch.tensor([0, 2]))


def test_focal_gamma0_weighted_matches_cross_entropy_sum_over_n(batch):
    z, y = batch
    logits, target = as_torch(z, y)
    w = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.0, 3.0, 0.7], dtype=torch.float64)
    got = FocalLoss(0.0, alpha=w)(logits, target)
    want = F.cross_entropy(logits, target, weight=w, reduction="sum") / len(y)
    assert_close(got, want, rtol=1e-12, atol=0)
    # and per sample
    got_none = FocalLoss(0.0, alpha=w, reduction="none")(logits, target)
    assert_close(got_none, F.cross_entropy(logits, target, weight=w, reduction="none"), rtol=1e-12, atol=0)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_matches_numpy(batch, gamma, reduction):
    z, y = batch
    logits, target = as_torch(z, y)
    np.testing.assert_allclose(
        FocalLoss(gamma, reduction=reduction)(logits, target).numpy(),
        np_focal(z, y, gamma, reduction=reduction),
        rtol=1e-12,
        atol=1e-14,
    )
    alpha = np.linspace(0.2, 1.4, 7)  # the functional form builds alpha in the logits' dtype, float64 here
    np.testing.assert_allclose(
        focal_loss(logits, target, gamma, alpha=alpha.tolist(), reduction=reduction).numpy(),
        np_focal(z, y, gamma, alpha, reduction=reduction),
        rtol=1e-12,
        atol=1e-14,
    )
    alpha = np.arange(1, 8) / 4  # exact in the module's float32 buffer
    np.testing.assert_allclose(
        FocalLoss(gamma, alpha=alpha.tolist(), reduction=reduction)(logits, target).numpy(),
        np_focal(z, y, gamma, alpha, reduction=reduction),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("ignore_index", [-100, 2, 255])  # 255: past the classes, as in segmentation
def test_focal_ignore_index(batch, gamma, ignore_index):
    z, y = batch
    y = y.copy()
    y[::5] = ignore_index
    logits, target = as_torch(z, y)
    for reduction in ("none", "mean", "sum"):
        got = FocalLoss(gamma, reduction=reduction, ignore_index=ignore_index)(logits, target).numpy()
        np.testing.assert_allclose(
            got, np_focal(z, y, gamma, reduction=reduction, ignore_index=ignore_index), rtol=1e-12, atol=1e-14
        )
    none = FocalLoss(gamma, reduction="none", ignore_index=ignore_index)(logits, target)
    assert (none[::5] == 0).all()
    mean = FocalLoss(gamma, ignore_index=ignore_index)(logits, target)
    kept = torch.tensor(y != ignore_index)
    assert mean.item() == pytest.approx(none[kept].mean().item(), rel=1e-12)
    if gamma == 0.0:
        want = F.cross_entropy(logits, target, ignore_index=ignore_index)
        assert_close(mean, want, rtol=1e-12, atol=0)


def test_all_ignored_mean_is_nan_with_zero_gradient_like_cross_entropy():
    target = torch.full((3,), -100)
    for loss_fn in (F.cross_entropy, FocalLoss(), FocalLoss(gamma=0.0), SampleDependentFocalLoss(), BrierLoss()):
        logits = torch.zeros(3, 4, requires_grad=True)
        out = loss_fn(logits, target)
        out.backward()
        assert torch.isnan(out) and (logits.grad == 0).all()
    assert FocalLoss(reduction="sum")(torch.zeros(3, 4), target).item() == 0.0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_gradient_matches_autograd_reference(batch, gamma, reduction):
    z, y = batch
    alpha = torch.linspace(0.2, 1.4, 7, dtype=torch.float64)
    y = y.copy()
    y[::7] = -100
    logits, target = as_torch(z, y, requires_grad=True)
    out = FocalLoss(gamma, alpha=alpha, reduction=reduction)(logits, target)
    # a non-uniform upstream gradient for "none" (a vector grad_outputs would import sympy: ~1 s)
    seed = torch.linspace(-1, 1, len(y), dtype=torch.float64) if reduction == "none" else 1.0
    (grad,) = torch.autograd.grad((out * seed).sum(), logits)

    ref_logits = logits.detach().clone().requires_grad_()
    keep = target != -100
    per = torch_focal_reference(ref_logits[keep], target[keep], gamma) * alpha[target[keep]]
    if reduction == "none":
        ref = torch.zeros(len(y), dtype=torch.float64).index_put((keep.nonzero().squeeze(1),), per)
    else:
        ref = per.sum() / (keep.sum() if reduction == "mean" else 1)
    (want,) = torch.autograd.grad((ref * seed).sum(), ref_logits)
    assert_close(grad, want, rtol=1e-10, atol=1e-13)
    assert (grad[::7] == 0).all()


def numeric_gradient(f, z: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function ``f`` at ``z``."""
    grad = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        step = np.zeros_like(z)
        step[idx] = eps
        grad[idx] = (f(z + step) - f(z - step)) / (2 * eps)
    return grad


def test_gradients_match_finite_differences_of_numpy_reference():
    gen = np.random.default_rng(1)
    z = gen.normal(size=(6, 4))
    y = np.array([0, 3, -100, 2, 1, 1])
    alpha = [1.0, 0.5, 2.0, 0.1]
    cases = [
        (lambda x, t: focal_loss(x, t, 0.5, alpha=alpha), lambda v: np_focal(v, y, 0.5, alpha)),
        (lambda x, t: focal_loss(x, t, 2.0, reduction="sum"), lambda v: np_focal(v, y, 2.0, reduction="sum")),
        (lambda x, t: sample_dependent_focal_loss(3 * x, t), lambda v: np_focal(3 * v, y, np_flsd_gamma(3 * z, y))),
        (lambda x, t: brier_loss(x, t), lambda v: np_brier(v, y)),
    ]
    for loss_fn, reference in cases:
        logits, target = as_torch(z, y, requires_grad=True)
        loss_fn(logits, target).backward()
        np.testing.assert_allclose(logits.grad.numpy(), numeric_gradient(reference, z), rtol=1e-6, atol=1e-9)


def test_focal_alpha_is_a_buffer_that_follows_dtype():
    loss = FocalLoss(alpha=[0.25, 1.0])
    assert "alpha" in dict(loss.named_buffers())
    assert loss.double().alpha.dtype == torch.float64
    assert FocalLoss().alpha is None and FocalLoss(alpha=0.3).alpha == 0.3


# ---------------------------------------------------------------------------------------------------------
# FLSD-53


def flsd_batch():
    gen = np.random.default_rng(3)
    z = gen.normal(scale=3.0, size=(48, 5))
    y = gen.integers(0, 5, size=48)
    return z, y


def test_flsd_matches_numpy_on_mixed_batch():
    z, y = flsd_batch()
    gamma = np_flsd_gamma(z, y)
    assert (gamma == 5.0).sum() >= 5 and (gamma == 3.0).sum() >= 5  # both regimes are exercised
    logits, target = as_torch(z, y)
    for reduction in ("none", "mean", "sum"):
        got = SampleDependentFocalLoss(reduction=reduction)(logits, target).numpy()
        np.testing.assert_allclose(got, np_focal(z, y, gamma, reduction=reduction), rtol=1e-12, atol=1e-14)
    # the per-sample choice is not a single gamma
    mean = SampleDependentFocalLoss()(logits, target).item()
    assert mean != pytest.approx(np_focal(z, y, 3.0)) and mean != pytest.approx(np_focal(z, y, 5.0))


def test_flsd_ignore_index():
    z, y = flsd_batch()
    y = y.copy()
    y[1::4] = -100
    logits, target = as_torch(z, y)
    got = sample_dependent_focal_loss(logits, target).item()
    assert got == pytest.approx(np_focal(z, y, np_flsd_gamma(z, y), ignore_index=-100), rel=1e-12)


def test_flsd_gradient_is_focal_with_gamma_held_fixed():
    z, y = flsd_batch()
    logits, target = as_torch(z, y, requires_grad=True)
    SampleDependentFocalLoss()(logits, target).backward()
    gamma = torch.tensor(np_flsd_gamma(z, y))  # constants: no gradient through the switch
    ref_logits = logits.detach().clone().requires_grad_()
    torch_focal_reference(ref_logits, target, gamma).mean().backward()
    assert_close(logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-13)


def test_flsd_threshold_is_strict_at_exactly_0_2():
    # Mukhoti et al.'s released FocalLossAdaptive picks gamma 5 only where p_y < 0.2 (strictly), gamma 3 at
    # p_y = 0.2 exactly. Five equal logits give p_y = exp(-log 5), which is the double 0.2 itself; a logit
    # 1e-3 lower / higher on the true class moves p_y just below / above it.
    z = np.array([[0.0] * 5, [-1e-3, 0.0, 0.0, 0.0, 0.0], [1e-3, 0.0, 0.0, 0.0, 0.0]])
    y = np.zeros(3, dtype=np.int64)
    p = np.exp(np_log_softmax(z)[:, 0])
    assert p[0] == 0.2 and p[1] < 0.2 < p[2]
    # by hand: -(1 - p)^gamma log p with gamma 3, 5, 3
    expected = -(1 - p) ** np.array([3.0, 5.0, 3.0]) * np.log(p)
    assert expected[0] == pytest.approx(0.8**3 * math.log(5), rel=1e-14)
    logits, target = as_torch(z, y)
    got = SampleDependentFocalLoss(reduction="none")(logits, target).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)


def test_flsd_custom_gammas_and_threshold():
    z, y = flsd_batch()
    logits, target = as_torch(z, y)
    got = SampleDependentFocalLoss(gamma_low=1.0, gamma_high=1.0, threshold=0.5)(logits, target)
    assert_close(got, FocalLoss(gamma=1.0)(logits, target), rtol=1e-12, atol=0)
    # threshold 0: nobody is below it, so every sample uses gamma_high
    got = SampleDependentFocalLoss(threshold=0.0)(logits, target)
    assert_close(got, FocalLoss(gamma=3.0)(logits, target), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Brier


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_brier_matches_numpy(batch, reduction):
    z, y = batch
    for ignore_index in (-100, 255):
        y = batch[1].copy()
        y[3::9] = ignore_index
        logits, target = as_torch(z, y)
        np.testing.assert_allclose(
            BrierLoss(reduction=reduction, ignore_index=ignore_index)(logits, target).numpy(),
            np_brier(z, y, reduction=reduction, ignore_index=ignore_index),
            rtol=1e-12,
            atol=1e-14,
        )


def test_brier_hand_values():
    # one-hot-like logits: softmax is onehot up to e^-50, so the score is ~0
    target = torch.tensor([0, 2, 1])
    confident = 50.0 * F.one_hot(target, 4).double()
    assert brier_loss(confident, target).item() == pytest.approx(0.0, abs=1e-20)
    # uniform logits: (1 - 1/C)^2 + (C - 1) / C^2 = (C - 1) / C
    for c in (2, 4, 10):
        assert brier_loss(torch.zeros(3, c), torch.tensor([0, 1, 1])).item() == pytest.approx((c - 1) / c, abs=1e-6)
    # wrong and confident: (1 - 0)^2 + 1^2 = 2, the maximum
    assert BrierLoss()(torch.tensor([[-50.0, 50.0]]), torch.tensor([0])).item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------------------
# saturated logits


SATURATED_LOSSES = [FocalLoss(gamma=g) for g in (0.0, 0.5, 1.0, 2.0, 5.0)] + [
    FocalLoss(gamma=0.5, alpha=[0.3, 0.7]),
    SampleDependentFocalLoss(),
    SampleDependentFocalLoss(gamma_low=0.5, gamma_high=0.25),
    BrierLoss(),
]


@pytest.mark.parametrize("loss_fn", SATURATED_LOSSES, ids=repr)
@pytest.mark.parametrize("wrong_way", [False, True])
def test_saturated_logits_give_finite_loss_and_gradient(loss_fn, wrong_way):
    for dtype in (torch.float32, torch.float64):
        for reduction in ("none", "mean"):
            logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], dtype=dtype)
            logits = (-logits if wrong_way else logits).requires_grad_()
            loss_fn.reduction = reduction
            try:
                out = loss_fn(logits, torch.tensor([0, 1]))
                out.sum().backward()
            finally:
                loss_fn.reduction = "mean"
            check_saturated(loss_fn, wrong_way, dtype, reduction, out.detach(), logits.grad)


def check_saturated(loss_fn, wrong_way, dtype, reduction, out, grad):
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    if not wrong_way:
        # p_y = 1 - e^-200: exactly 1 in float32, where d(x^gamma)/dx is infinite at x = 1 - p_y = 0 for
        # 0 < gamma < 1; zero loss and gradient either way (up to e^-200 ~ 1e-87 in float64)
        assert out.abs().max().item() <= 1e-80 and grad.abs().max().item() <= 1e-80
        if dtype == torch.float32:
            assert (out == 0).all() and (grad == 0).all()
    elif isinstance(loss_fn, BrierLoss):
        assert out.sum().item() == pytest.approx(4.0 if reduction == "none" else 2.0)
    else:
        # log p_y = -200, 1 - p_y = 1: loss alpha_y * 200; gradient alpha_y * (softmax - onehot) = alpha_y * (+-1)
        alpha = torch.ones(2, dtype=dtype) if getattr(loss_fn, "alpha", None) is None else loss_fn.alpha.to(dtype)
        assert out.sum().item() == pytest.approx(200.0 * alpha.sum().item() / (2 if reduction == "mean" else 1))
        scale = 0.5 if reduction == "mean" else 1.0
        want = scale * torch.stack([alpha[0] * torch.tensor([-1.0, 1.0]), alpha[1] * torch.tensor([1.0, -1.0])])
        assert_close(grad, want.to(dtype), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# bad arguments and inputs


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: FocalLoss(gamma=-1), "gamma"),
        (lambda: FocalLoss(gamma=float("inf")), "gamma"),
        (lambda: FocalLoss(reduction="avg"), "reduction"),
        (lambda: FocalLoss(alpha=1.5), "alpha"),
        (lambda: FocalLoss(alpha=[0.5, -0.1]), "alpha"),
        (lambda: FocalLoss(alpha=[0.5, float("nan")]), "alpha"),
        (lambda: FocalLoss(alpha="balanced"), "alpha"),
        (lambda: FocalLoss(ignore_index=1.5), "ignore_index"),
        (lambda: SampleDependentFocalLoss(gamma_low=-1), "gamma_low"),
        (lambda: SampleDependentFocalLoss(gamma_high=float("nan")), "gamma_high"),
        (lambda: SampleDependentFocalLoss(threshold=1.5), "threshold"),
        (lambda: SampleDependentFocalLoss(reduction="avg"), "reduction"),
        (lambda: BrierLoss(reduction="avg"), "reduction"),
        (lambda: focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), gamma=-1), "gamma"),
        (lambda: brier_loss(torch.zeros(2, 2), torch.tensor([0, 1]), reduction="avg"), "reduction"),
        (lambda: SampleDependentFocalLoss(ignore_index=1.5), "ignore_index"),
        (lambda: BrierLoss(ignore_index=1.5), "ignore_index"),
        (lambda: focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), reduction="avg"), "reduction"),
        (lambda: focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), ignore_index=1.5), "ignore_index"),
        (lambda: sample_dependent_focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), reduction="avg"), "reduction"),
        (lambda: sample_dependent_focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), ignore_index=1.5),
         "ignore_index"),
        (lambda: brier_loss(torch.zeros(2, 2), torch.tensor([0, 1]), ignore_index=1.5), "ignore_index"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()


BAD_INPUTS = [
    (torch.zeros(3), torch.tensor([0, 1, 2]), "logits"),  # 1-D logits
    (torch.zeros(3, 3), torch.tensor([[0], [1], [2]]), "target"),  # (N, 1) targets
    (torch.zeros(3, 3), torch.tensor([0.0, 1.0, 2.0]), "target"),  # float targets
    (torch.zeros(3, 3), torch.tensor([0, 1, 3]), "target"),  # out of range
    (torch.zeros(3, 3), torch.tensor([0, 1, -1]), "target"),  # negative, not ignore_index
    (torch.tensor([[0.0, float("nan"), 0.0]] * 3), torch.tensor([0, 1, 2]), "logits"),
    (torch.tensor([[0.0, float("inf"), 0.0]] * 3), torch.tensor([0, 1, 2]), "logits"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), "logits"),  # empty
    (torch.zeros(3, 3), torch.tensor([0, 1]), "target"),  # N mismatch
]


@pytest.mark.parametrize("logits, target, name", BAD_INPUTS)
def test_bad_inputs_name_the_argument(logits, target, name):
    for loss_fn in (FocalLoss(), FocalLoss(alpha=[1.0, 1.0, 1.0]), SampleDependentFocalLoss(), BrierLoss()):
        with pytest.raises(ValueError, match=f"`{name}`"):
            loss_fn(logits, target)
    for loss_fn in (lambda x, t: focal_loss(x, t, alpha=[1.0, 1.0, 1.0]), sample_dependent_focal_loss, brier_loss):
        with pytest.raises(ValueError, match=f"`{name}`"):
            loss_fn(logits, target)


def test_functional_forms_equal_modules(batch):
    z, y = batch
    logits, target = as_torch(z, y)
    assert_close(
        focal_loss(logits, target, 1.5, reduction="sum"),
        FocalLoss(1.5, reduction="sum")(logits, target),
        rtol=0,
        atol=0,
    )
    assert_close(
        sample_dependent_focal_loss(logits, target), SampleDependentFocalLoss()(logits, target), rtol=0, atol=0
    )
    assert_close(
        brier_loss(logits, target, reduction="none"), BrierLoss(reduction="none")(logits, target), rtol=0, atol=0
    )


# ---------------------------------------------------------------------------------------------------------
# exact messages, extra_repr, defaults, dtypes and warnings


ALPHA_MESSAGES = [
    (lambda: FocalLoss(alpha=["a", "b"]),
     "Expected argument `alpha` to be None, a float or a sequence of class weights, but got ['a', 'b']"),
    (lambda: FocalLoss(alpha=[]), "Expected argument `alpha` to be a non-empty 1-D sequence, but got shape (0,)"),
    (lambda: focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), alpha=torch.ones(2, 2)),
     "Expected argument `alpha` to be a non-empty 1-D sequence, but got shape (2, 2)"),
    (lambda: FocalLoss(alpha=0.25)(torch.zeros(2, 3), torch.tensor([0, 2])),
     ("Expected argument `alpha` to be a sequence of C=3 per-class weights, but got the float 0.25: a float `alpha` "
      "is only defined for C == 2 classes; pass a sequence of C per-class weights")),
]


@pytest.mark.parametrize("make, message", ALPHA_MESSAGES)
def test_bad_alpha_messages_are_exact(make, message):
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == message


def test_extra_repr_and_defaults():
    # the defaults are the papers': focal gamma 2 (Lin et al.), FLSD-53 (Mukhoti et al.)
    assert FocalLoss().extra_repr() == "gamma=2.0, alpha=None, reduction='mean', ignore_index=-100"
    assert FocalLoss(1, alpha=0.3, reduction="sum", ignore_index=4).extra_repr() == \
        "gamma=1.0, alpha=0.3, reduction='sum', ignore_index=4"
    assert FocalLoss(alpha=[0.5, 2.0]).extra_repr() == \
        "gamma=2.0, alpha=[0.5, 2.0], reduction='mean', ignore_index=-100"
    # an integer tensor becomes float weights in torch's default dtype (so that .double() converts it too)
    ints = FocalLoss(alpha=torch.tensor([1, 2, 3]))
    assert ints.alpha.dtype == torch.get_default_dtype()
    assert ints.extra_repr() == "gamma=2.0, alpha=[1.0, 2.0, 3.0], reduction='mean', ignore_index=-100"
    assert SampleDependentFocalLoss().extra_repr() == \
        "gamma_low=5.0, gamma_high=3.0, threshold=0.2, reduction='mean', ignore_index=-100"
    assert BrierLoss("sum", 7).extra_repr() == "reduction='sum', ignore_index=7"
    z, y = flsd_batch()
    logits, target = as_torch(z, y)
    np.testing.assert_allclose(focal_loss(logits, target).item(), np_focal(z, y, 2.0), rtol=1e-12)
    np.testing.assert_allclose(FocalLoss()(logits, target).item(), np_focal(z, y, 2.0), rtol=1e-12)


def test_alpha_is_cast_to_the_working_dtype():
    z, y = flsd_batch()
    z2, y2 = z[:, :2], y % 2
    # float64 logits: a float alpha of 0.3 (not exact in float32) is used in float64, against the numpy reference
    logits, target = as_torch(z2, y2)
    want = np_focal(z2, y2, 2.0, [0.7, 0.3])
    for got in (focal_loss(logits, target, alpha=0.3), FocalLoss(alpha=0.3)(logits, target)):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.item(), want, rtol=1e-14)
    # float32 logits and a float64 alpha tensor: the loss stays float32
    alpha = torch.tensor([0.3, 0.2, 1.1, 0.5, 0.9], dtype=torch.float64)
    logits32 = torch.tensor(z, dtype=torch.float32)
    for gamma in (0.0, 2.0):
        want = np_focal(logits32.double().numpy(), y, gamma, alpha.numpy())
        for got in (focal_loss(logits32, torch.tensor(y), gamma, alpha=alpha),
                    FocalLoss(gamma, alpha=alpha)(logits32, torch.tensor(y))):
            assert got.dtype == torch.float32
            np.testing.assert_allclose(got.item(), want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_give_float32_losses(dtype):
    z, y = flsd_batch()
    logits, target = torch.tensor(z).to(dtype), torch.tensor(y)
    z16 = logits.double().numpy()  # the values the losses see
    for loss_fn, want in [(FocalLoss(), np_focal(z16, y, 2.0)),
                          (SampleDependentFocalLoss(), np_focal(z16, y, np_flsd_gamma(z16, y))),
                          (BrierLoss(), np_brier(z16, y)), (brier_loss, np_brier(z16, y))]:
        got = loss_fn(logits, target)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=1e-6)


def test_gamma_0_is_exactly_cross_entropy_even_where_the_loss_overflows():
    # a logit gap past float32's range: log p_y = -inf, an infinite loss, and cross-entropy's finite gradient
    logits = torch.tensor([[3e38, -3e38], [0.5, -1.0]])
    target = torch.tensor([1, 0])
    for reduction in ("none", "mean", "sum"):
        ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = FocalLoss(gamma=0.0, reduction=reduction)(ours, target)
        want = F.cross_entropy(theirs, target, reduction=reduction)
        got.sum().backward()
        want.sum().backward()
        assert_close(got.detach(), want.detach(), rtol=1e-6, atol=0)
        assert torch.isfinite(ours.grad).all()
        assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-7)


def test_losses_give_no_warning():
    import warnings

    z, y = flsd_batch()
    logits, target = as_torch(z, y, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loss_fn in (FocalLoss(), FocalLoss(0.0), SampleDependentFocalLoss(), BrierLoss()):
            loss_fn(logits, target).backward()
