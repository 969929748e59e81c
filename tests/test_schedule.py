"""Sparsity and LR schedules: pure maths, no model."""

from __future__ import annotations

import pytest

from compressor.errors import ConfigError
from passes._schedule import (cubic_sparsity, lr_lambda, oneshot, warmup_constant,
                              warmup_linear_decay)


def test_cubic_endpoints_and_formula():
    assert cubic_sparsity(0, 100, 0.0, 0.9) == 0.0
    assert cubic_sparsity(100, 100, 0.0, 0.9) == pytest.approx(0.9)
    # Zhu & Gupta eq. (1) at half way: s_f + (s_i - s_f) * 0.5^3
    assert cubic_sparsity(50, 100, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.125)


def test_cubic_monotone_and_constant_outside_window():
    values = [cubic_sparsity(t, 200, 0.0, 0.8, start=0.2, end=0.6) for t in range(201)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(v == 0.0 for v in values[:41])          # before 20% of training
    assert all(v == pytest.approx(0.8) for v in values[120:])  # after 60%
    assert 0.0 < values[80] < 0.8
    # concave ramp: faster pruning early in the window than late
    assert values[60] - values[40] > values[120] - values[100]


def test_cubic_degenerate_window_is_a_step():
    assert cubic_sparsity(49, 100, 0.0, 0.5, start=0.5, end=0.5) == 0.0
    assert cubic_sparsity(50, 100, 0.0, 0.5, start=0.5, end=0.5) == 0.5


def test_oneshot():
    assert oneshot(0, 10, 0.0, 0.7) == 0.7
    assert oneshot(4, 10, 0.0, 0.7, at=0.5) == 0.0
    assert oneshot(5, 10, 0.0, 0.7, at=0.5) == 0.7


def test_warmup_linear_decay():
    f = [warmup_linear_decay(t, 10, 100) for t in range(101)]
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert f[100] == 0.0 and f[55] == pytest.approx(0.5)
    assert max(f) == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(f[10:], f[11:]))
    assert warmup_linear_decay(3, 0, 4) == pytest.approx(0.25)


def test_warmup_constant_and_lr_lambda():
    assert warmup_constant(0, 0) == 1.0
    assert warmup_constant(2, 4) == 0.5 and warmup_constant(40, 4) == 1.0
    lam = lr_lambda("linear", 2, 10)
    assert lam(1) == pytest.approx(0.5) and lam(10) == 0.0
    with pytest.raises(ConfigError, match="cosine"):
        lr_lambda("cosine", 0, 10)


def test_lr_restarts_rewarm_at_each_restart_and_decay_to_zero_before_it():
    lam = lr_lambda("linear", 10, 100, restarts=(25, 50, 75))
    f = [lam(t) for t in range(101)]
    for a, b in ((0, 25), (25, 50), (50, 75), (75, 100)):  # four cycles of 25 steps, warm-up round(2.5)
        assert f[a] == 0.0 and f[a + 1] == pytest.approx(0.5) and f[a + 2] == pytest.approx(1.0)
        assert f[b - 1] == pytest.approx(1 / 23)  # decayed almost to 0 right before the next restart
        assert all(y <= x for x, y in zip(f[a + 2:b], f[a + 3:b]))
    assert f[100] == 0.0
    plain = lr_lambda("linear", 10, 100, restarts=(0, 100, 250))  # nothing inside (0, total): one cycle
    assert [plain(t) for t in range(101)] == [lr_lambda("linear", 10, 100)(t) for t in range(101)]
