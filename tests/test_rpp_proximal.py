"""RPP's proximal operators (``passes.rpp.proximal``) against their closed forms: soft threshold,
reweighting, the group prox, auto gamma and the weighted quantile."""

from __future__ import annotations

import pytest
import torch

from passes.rpp import proximal as P


def test_soft_threshold_known_values_and_exact_zeros():
    u = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.3])
    w = P.soft_threshold(u, 0.1)
    assert torch.allclose(w, torch.tensor([-0.4, 0.0, 0.0, 0.0, 0.2]))
    assert int((w == 0).sum()) == 3  # exact zeros, not tiny values


@pytest.mark.parametrize("u,t", [(0.7, 0.2), (-0.3, 0.5), (0.05, 0.05), (-1.2, 0.01), (0.0, 0.3)])
def test_prox_is_argmin_of_scalar_objective_on_grid(u, t):
    grid = torch.linspace(-2, 2, 400001, dtype=torch.float64)
    obj = t * grid.abs() + 0.5 * (grid - u) ** 2
    best = float(grid[obj.argmin()])
    assert abs(float(P.soft_threshold(torch.tensor(u, dtype=torch.float64), t)) - best) <= 1e-5


def test_reweighting_gives_small_weights_larger_thresholds():
    w = torch.tensor([0.001, -0.002, 0.1, -0.3])
    prox = P.WeightProx([w], eps=1e-3)
    alpha = prox.alphas[0]
    assert torch.allclose(alpha, 1 / (w.abs() + 1e-3))
    assert alpha[0] > alpha[1] > alpha[2] > alpha[3]
    prox.step(lr=1.0, gamma=1e-4)  # thresholds 0.05, 0.033, 9.9e-4, 3.3e-4
    expected = torch.sign(torch.tensor([0.001, -0.002, 0.1, -0.3])) * torch.tensor(
        [0.0, 0.0, 0.1 - 1e-4 / 0.101, 0.3 - 1e-4 / 0.301])
    assert torch.allclose(w, expected, atol=1e-7)
    assert w[0] == 0 and w[1] == 0 and prox.zero_fraction() == 0.5


def test_alphas_constant_until_reweight():
    w = torch.tensor([0.05, 0.02, -0.04])
    prox = P.WeightProx([w], eps=1e-3)
    before = prox.alphas[0].clone()
    prox.step(lr=1.0, gamma=1e-4)
    prox.step(lr=1.0, gamma=1e-4)
    assert torch.equal(prox.alphas[0], before) and prox.reweightings == 1
    prox.reweight()  # recomputed from the post-prox weights
    assert prox.reweightings == 2
    assert torch.allclose(prox.alphas[0], 1 / (w.abs() + 1e-3)) and not torch.equal(prox.alphas[0], before)


def test_group_prox_closed_form_and_grid():
    # one group of two entries spread over two tensors: rms r = ||x|| / sqrt(2)
    a, b = torch.tensor([[0.3]]), torch.tensor([0.4])
    g = P.GroupSet([(a, 0), (b, 0)], n=1)
    r = float(g.rms())
    assert abs(r - 0.5 / 2 ** 0.5) < 1e-7
    t = 0.1  # prox of t * sqrt(2) * ||x|| (penalty in rms units) == scale by 1 - t / r
    g.scale_(P.group_scale(g.rms(), torch.tensor([t])))
    got = torch.tensor([float(a), float(b)], dtype=torch.float64)
    xs = torch.linspace(-0.1, 0.6, 701, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    obj = t * 2 ** 0.5 * (X ** 2 + Y ** 2).sqrt() + 0.5 * ((X - 0.3) ** 2 + (Y - 0.4) ** 2)
    i = int(obj.argmin())
    best = torch.tensor([float(X.reshape(-1)[i]), float(Y.reshape(-1)[i])], dtype=torch.float64)
    assert torch.allclose(got, best, atol=1.5e-3)
    assert torch.allclose(got, torch.tensor([0.3, 0.4], dtype=torch.float64) * (1 - t / r), atol=1e-6)
    g.scale_(P.group_scale(g.rms(), torch.tensor([10.0])))  # threshold above rms: exact zeros
    assert float(a) == 0.0 and float(b) == 0.0


def test_auto_gamma_drives_the_quantile_weight_to_zero():
    from passes._schedule import warmup_linear_decay as f
    total, n, lr, eps, q = 100, 60, 1e-3, 1e-3, 0.03
    gamma = P.auto_gamma(q, eps, P.lr_sum(lr, f, n, 10, total))
    assert gamma == pytest.approx((q * q / 2 + eps * q) / sum(lr * f(t, 10, total) for t in range(n)))
    w = torch.tensor([0.9 * q, 1.1 * q, 0.5 * q])
    prox = P.WeightProx([w], eps)
    for t in range(n):  # prox only, reweighting every step
        prox.step(lr * f(t, 10, total), gamma)
        prox.reweight()
    assert w[0] == 0 and w[2] == 0 and w[1] > 0


def test_weighted_quantile():
    v = torch.tensor([3.0, 1.0, 2.0])
    assert P.weighted_quantile(v, None, 0.5) == 2.0
    assert P.weighted_quantile(v, torch.tensor([1.0, 10.0, 1.0]), 0.5) == 1.0
    assert P.prox_steps(10, 0.6) == 6 and P.prox_steps(3, 0.5) == 2 and P.prox_steps(5, 1.0) == 5
