"""Logit-based methods against references written from the papers' formulas (numpy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdexp.distill import create_method, kd_loss
from kdexp.models.base import FeatureOutput

S = np.array([[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 2.2], [-1.0, 0.0, 1.0, 0.5]])
T = np.array([[3.0, 0.0, 1.0, -1.0], [0.0, 2.0, 0.0, 1.0], [0.5, -0.5, 2.0, 0.0]])
Y = np.array([0, 3, 2])


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl_rows(p, q):
    return (p * np.log(p / q)).sum(axis=1)


def outputs(logits, grad=False) -> FeatureOutput:
    return FeatureOutput(torch.tensor(logits, requires_grad=grad), [], [], None)


def value(x) -> float:
    return x.detach().item() if isinstance(x, torch.Tensor) else float(x)


def run(method, epoch=0, s=S, t=T, y=Y):
    student = outputs(s, grad=True)
    terms = method(student, outputs(t), torch.tensor(y), torch.arange(len(y)), epoch)
    return terms, student


def dkd_reference(s, t, y, alpha, beta, tau):
    p_s, p_t = softmax(s / tau), softmax(t / tau)
    rows = np.arange(len(y))
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], axis=1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], axis=1)
    mask = np.ones_like(p_s, dtype=bool)
    mask[rows, y] = False
    n_s = p_s[mask].reshape(len(y), -1)
    n_t = p_t[mask].reshape(len(y), -1)
    n_s, n_t = n_s / n_s.sum(1, keepdims=True), n_t / n_t.sum(1, keepdims=True)
    tckd, nckd = kl_rows(b_t, b_s).mean(), kl_rows(n_t, n_s).mean()
    return (alpha * tckd + beta * nckd) * tau**2, tckd, nckd


def test_dkd_matches_reference_and_warms_up():
    method = create_method("dkd", alpha=1.0, beta=8.0, temperature=4.0, warmup=20)
    expected, _, _ = dkd_reference(S, T, Y, 1.0, 8.0, 4.0)
    terms, _ = run(method, epoch=100)
    assert set(terms) == {"dkd"}
    assert value(terms["dkd"]) == pytest.approx(expected, rel=1e-9)
    assert value(run(method, epoch=0)[0]["dkd"]) == pytest.approx(expected / 20, rel=1e-9)
    assert value(run(method, epoch=9)[0]["dkd"]) == pytest.approx(expected / 2, rel=1e-9)


def test_dkd_with_kd_weights_recovers_the_decomposition_of_kd():
    # paper eq. (1): KD = TCKD + (1 - p_t^target) * NCKD, per sample
    tau = 2.0
    _, tckd, nckd = dkd_reference(S[:1], T[:1], Y[:1], 1, 1, tau)
    p_t_target = softmax(T[:1] / tau)[0, Y[0]]
    kd = float(kd_loss(torch.tensor(S[:1]), torch.tensor(T[:1]), tau)) / tau**2
    assert kd == pytest.approx(tckd + (1 - p_t_target) * nckd, rel=1e-9)


def test_dkd_is_finite_when_the_target_probability_saturates():
    s = np.array([[200.0, 0.0, 0.0]])
    terms, student = run(
        create_method("dkd", warmup=1), s=s, t=np.array([[0.0, 100.0, 0.0]]), y=np.array([0])
    )
    terms["dkd"].backward()
    assert torch.isfinite(terms["dkd"]) and torch.isfinite(student.logits.grad).all()


def pearson_distance(a, b):
    return np.mean([1 - np.corrcoef(x, z)[0, 1] for x, z in zip(a, b)])


def test_dist_matches_reference():
    beta, gamma, tau = 2.0, 3.0, 4.0
    p_s, p_t = softmax(S / tau), softmax(T / tau)
    inter = pearson_distance(p_s, p_t)  # rows: one sample's scores over classes
    intra = pearson_distance(p_s.T, p_t.T)  # columns: one class's scores over the batch
    expected = tau**2 * (beta * inter + gamma * intra)
    terms, _ = run(create_method("dist", beta=beta, gamma=gamma, temperature=tau))
    assert set(terms) == {"dist"}
    assert value(terms["dist"]) == pytest.approx(expected, rel=1e-6)


def test_kd_std_matches_reference_and_ignores_logit_scale():
    base = 2.0

    def z(x):
        return (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True)

    p_s, p_t = softmax(z(S) / base), softmax(z(T) / base)
    expected = kl_rows(p_t, p_s).mean() * base**2
    method = create_method("kd_std", temperature=base)
    terms, _ = run(method)
    assert set(terms) == {"kd_std"}
    assert value(terms["kd_std"]) == pytest.approx(expected, rel=1e-6)
    # standardisation: an affine rescaling of the student's logits does not change the loss
    assert value(run(method, s=5 * S + 3)[0]["kd_std"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["dkd", "dist", "kd_std"])
def test_logit_methods_give_gradient_to_the_student_only(name):
    student = outputs(S, grad=True)
    teacher = torch.tensor(T, requires_grad=True)  # a method must not backpropagate into it
    terms = create_method(name)(student, FeatureOutput(teacher, [], [], None), torch.tensor(Y), None, 50)
    terms[name].backward()
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    assert teacher.grad is None
