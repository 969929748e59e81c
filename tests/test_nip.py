"""NIP: increment schedules, monotone masks, the final target, structured units, and end-to-end
runs through the pass API and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from passes.families import family_of
from passes.families.base import ROLES
from passes.nip import Nip, increment_sparsities, increment_steps
from tests.conftest import make_tiny_model, make_toy_task, run_method_cli

FAST = dict(epochs=2, batch_size=8, lr=1e-3)


def make_ctx(tmp_path, n_train=32):
    return RunContext(workdir=tmp_path, data=make_toy_task(n_train=n_train, n_eval=16), progress=False)


def test_increment_sparsities():
    assert increment_sparsities(0.8, 4, "equal") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    cubic = increment_sparsities(0.8, 4, "cubic")
    assert cubic == pytest.approx([0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3), 0.8 * (1 - 0.25 ** 3), 0.8])
    for s in (cubic, increment_sparsities(0.5, 7, "equal")):
        assert all(a < b for a, b in zip(s, s[1:]))
    assert increment_sparsities(0.9, 1, "cubic") == [0.9]


def test_increment_steps():
    assert increment_steps(100, 4, 0.0, 1.0) == [0, 25, 50, 75]
    assert increment_steps(100, 2, 0.2, 0.6) == [20, 40]
    assert increment_steps(8, 4, 0.0, 1.0) == [0, 2, 4, 6]


def test_options_are_validated():
    for kw, msg in [(dict(sparsity=1.0), "nip.sparsity=1.0"), (dict(steps=0), "nip.steps=0"),
                    (dict(schedule="linear"), "nip.schedule='linear'"),
                    (dict(start=0.5, end=0.4), "nip.end=0.4"), (dict(epochs=0), "nip.epochs=0")]:
        with pytest.raises(ConfigError, match=msg):
            Nip(**kw)


def test_weight_run_increments_monotone_and_masks_only_grow(tokenizer, tmp_path, monkeypatch):
    from passes._masks import MaskSet
    snaps = []
    real = MaskSet.apply_magnitude

    def spy(self, sparsity, scope="global"):
        real(self, sparsity, scope)
        snaps.append({n: self.mask(n).clone() for n in self.modules})

    monkeypatch.setattr(MaskSet, "apply_magnitude", spy)
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = Nip(sparsity=0.7, steps=4, schedule="equal", **FAST)(TorchModel(model, tokenizer),
                                                                make_ctx(tmp_path))
    m = res.metrics
    inc = m["increments"]
    assert [i["step"] for i in inc] == [0, 2, 4, 6]  # 8 steps, 4 equal shares
    assert [i["target"] for i in inc] == pytest.approx([0.175, 0.35, 0.525, 0.7])
    assert all(abs(i["sparsity"] - i["target"]) < 1e-3 for i in inc)
    assert all(a["sparsity"] < b["sparsity"] for a, b in zip(inc, inc[1:]))
    for a, b in zip(snaps, snaps[1:]):  # a pruned weight never comes back
        assert all(bool((b[n] <= a[n]).all()) for n in a)
    assert abs(m["sparsity"] - 0.7) <= 0.005 and m["target_sparsity"] == 0.7
    out = res.artifact.model
    for name, mask in snaps[-1].items():  # the final mask survived the last fine-tuning share
        assert bool((out.get_submodule(name).weight[mask == 0] == 0).all())
    assert set(m["per_layer"]) == {"0", "1"} and 0.0 <= m["accuracy"] <= 1.0 and m["train_seconds"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert json.loads((tmp_path / "sparsity.json").read_text())["overall"] == m["sparsity"]
    assert (tmp_path / "model" / "config.json").is_file()


def test_structured_run_gives_whole_heads_and_neurons(tokenizer, tmp_path):
    res = Nip(sparsity=0.5, granularity="structured", steps=3, **FAST)(
        TorchModel(make_tiny_model(), tokenizer), make_ctx(tmp_path))
    m = res.metrics
    assert abs(m["sparsity"] - 0.5) <= 0.005
    assert all(a["sparsity"] <= b["sparsity"] for a, b in zip(m["increments"], m["increments"][1:]))
    family = family_of(res.artifact.model)
    for l, layer in enumerate(family.layers()):
        q, k, v, ao, f_in, f_out = (family.linear(layer, r) for r in ROLES)
        dead = (q.weight.reshape(4, -1).abs().sum(1) == 0)
        assert int(dead.sum()) == 4 - m["heads_kept"][l]
        for h in torch.nonzero(dead).reshape(-1).tolist():
            rows = slice(h * 8, (h + 1) * 8)
            for lin in (q, k, v):
                assert bool((lin.weight[rows] == 0).all()) and bool((lin.bias[rows] == 0).all())
            assert bool((ao.weight[:, rows] == 0).all())
        gone = f_in.weight.abs().sum(1) == 0
        assert int(gone.sum()) == 64 - m["neurons_kept"][l]
        assert bool((f_in.bias[gone] == 0).all()) and bool((f_out.weight[:, gone] == 0).all())
    assert sum(m["heads_kept"]) < 8 and sum(m["neurons_kept"]) < 128


def test_more_increments_than_steps_still_reach_target(tokenizer, tmp_path):
    res = Nip(sparsity=0.6, steps=6, epochs=1, batch_size=16, lr=1e-3)(
        TorchModel(make_tiny_model(), tokenizer), make_ctx(tmp_path, n_train=16))
    m = res.metrics  # one optimizer step, six increments
    assert m["steps"] == 1 and len(m["increments"]) == 6
    assert abs(m["sparsity"] - 0.6) <= 0.005


def test_cli_run(tmp_path, tokenizer, capsys):
    code, out = run_method_cli(tmp_path, tokenizer, "nip")
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert "finetune" in steps and "nip" in steps and "export" in steps
    assert abs(steps["nip"]["metrics"]["sparsity"] - 0.5) <= 0.005
    assert abs(report["models"]["compressed"]["sparsity"] - 0.5) <= 0.005


def test_lr_restarts_at_the_increments(tokenizer, tmp_path):
    """lr_restarts=true: the LR warms up again at every increment and at `end`, so each pruning step
    is followed by a short fine-tuning cycle (the LRs are read from the optimizer after each step)."""
    from passes.nip import restart_fractions
    assert restart_fractions(4, 0.0, 1.0) == pytest.approx((0.25, 0.5, 0.75))
    assert restart_fractions(2, 0.2, 0.6) == pytest.approx((0.2, 0.4, 0.6))
    import passes._train as tr
    seen = []
    real = tr._setup

    def spy(*a, **k):
        setup = real(*a, **k)
        sched = setup.scheduler
        seen.append([sched.lr_lambdas[0](t) for t in range(setup.total + 1)])
        return setup
    tr._setup, restore = spy, tr._setup
    try:
        res = Nip(sparsity=0.5, steps=2, schedule="equal", lr_restarts=True, end=0.5, **FAST)(
            TorchModel(make_tiny_model(), tokenizer), make_ctx(tmp_path))
    finally:
        tr._setup = restore
    f = seen[0]
    total = len(f) - 1
    assert [i["step"] for i in res.metrics["increments"]] == [0, round(0.25 * total)]
    rises = [t for t in range(1, total + 1) if f[t] > f[t - 1]]  # 8 steps: no warm-up inside a cycle
    assert total == 8 and rises == [2, 4]  # a new cycle at the increment and at `end`
    assert abs(res.metrics["sparsity"] - 0.5) < 0.01
