"""The sparsebert pass: pruning while distilling from the teacher, on tiny seeded models."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.errors import ConfigError  # noqa: E402
from passes import _train  # noqa: E402
from passes._masks import MaskSet, encoder_linears, sparsity_report  # noqa: E402
from passes._schedule import cubic_sparsity  # noqa: E402
from passes.sparsebert.sparsebert import SparseBert  # noqa: E402
from passes.sparsebert.training import mask_update_steps  # noqa: E402
from conftest import make_tiny_model, make_toy_task, run_method_cli  # noqa: E402

X = torch.randint(1000, 2000, (3, 9), generator=torch.Generator().manual_seed(0))


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=X).logits


@pytest.fixture
def pair(tokenizer):
    """(student artifact = 'pre-trained', teacher artifact = 'fine-tuned'): different weights."""
    return (TorchModel(make_tiny_model(seed=0), tokenizer, {"source": "tiny"}),
            TorchModel(make_tiny_model(seed=1), tokenizer, {"source": "teacher"}))


def make_ctx(tmp_path, teacher, n_train=32):
    return RunContext(workdir=tmp_path, data=make_toy_task(n_train=n_train, n_eval=16),
                      teacher=teacher, progress=False)


FAST = dict(epochs=1, batch_size=8)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="sparsity=1.0"):
        SparseBert(sparsity=1.0)
    with pytest.raises(ConfigError, match="granularity='heads'"):
        SparseBert(granularity="heads")
    with pytest.raises(ConfigError, match="all 0"):
        SparseBert(w_pred=0.0, w_hidden=0.0, w_attn=0.0, w_ce=0.0)
    with pytest.raises(ConfigError, match="temperature=0.0"):
        SparseBert(temperature=0.0)
    defaults = SparseBert()
    assert (defaults.sparsity, defaults.lr, defaults.epochs, defaults.batch_size, defaults.max_length,
            defaults.constant_lr, defaults.temperature, defaults.w_ce) == (
        0.95, 3e-5, 3, 32, 64, True, 1.0, 0.0)


def test_mask_update_schedule_matches_authors():
    # 100 updates over the whole run: F = round(steps / 100), K = steps // F.
    assert mask_update_steps(7051 * 12, 0.0, 1.0, 100) == (0, 846, 100)
    assert mask_update_steps(150, 0.0, 1.0, 100) == (0, 2, 75)
    assert mask_update_steps(1000, 0.2, 0.7, 100, update_every=50) == (200, 50, 10)
    # First update at K=100 gives ~2.8% (METHODS.md 2.4), the last the target.
    assert cubic_sparsity(1, 100, 0.0, 0.95) == pytest.approx(0.95 * (1 - 0.99 ** 3))
    assert cubic_sparsity(100, 100, 0.0, 0.95) == pytest.approx(0.95)


def test_needs_a_teacher(pair, tmp_path):
    ctx = make_ctx(tmp_path, None)
    with pytest.raises(ConfigError, match="needs a fine-tuned teacher: run finetune first or pass --teacher"):
        SparseBert(**FAST)(pair[0], ctx)


def test_teacher_must_match_hidden_size(pair, tokenizer, tmp_path):
    teacher = TorchModel(make_tiny_model(hidden=48, heads=4, seed=1), tokenizer)
    with pytest.raises(ConfigError, match="hidden size 48"):
        SparseBert(**FAST)(pair[0], make_ctx(tmp_path, teacher))


def test_weight_run_reaches_sparsity_per_matrix(pair, tmp_path, monkeypatch):
    student, teacher = pair
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    seen = {"sparsity": [], "zeros_hold": True, "teacher_eval": []}
    real_train = _train.train

    def spy_train(model, tokenizer, task, ctx, **kw):
        # The student starts from the artifact's weights, not the teacher's.
        sd, tsd = model.state_dict(), teacher.model.state_dict()
        w = "bert.encoder.layer.0.attention.self.query.parametrizations.weight.original"
        assert torch.equal(sd[w], before["bert.encoder.layer.0.attention.self.query.weight"])
        assert not torch.equal(sd[w], tsd["bert.encoder.layer.0.attention.self.query.weight"])
        assert model is not student.model
        teacher.model.register_forward_pre_hook(lambda m, a: seen["teacher_eval"].append(not m.training))
        masks, inner = MaskSet.from_model(model), kw["after_step"]

        def after_step(step, total):
            inner(step, total)
            seen["sparsity"].append(masks.sparsity_report()["overall"])
            for name, module in masks.modules.items():  # masked weights are exactly 0 after each step
                seen["zeros_hold"] &= bool((module.weight[masks.mask(name) == 0] == 0).all())
        return real_train(model, tokenizer, task, ctx, **{**kw, "after_step": after_step})

    monkeypatch.setattr(_train, "train", spy_train)
    res = SparseBert(sparsity=0.8, epochs=2, batch_size=8)(student, make_ctx(tmp_path, teacher))
    m = res.metrics
    assert abs(m["sparsity"] - 0.8) <= 0.005 and m["target_sparsity"] == 0.8
    # Per matrix (the authors' local threshold), not one global ranking.
    rep = sparsity_report(encoder_linears(res.artifact.model))
    assert all(abs(f - 0.8) <= 0.005 for f in rep["modules"].values())
    assert set(m["per_layer"]) == {"0", "1"} and all(abs(f - 0.8) <= 0.005 for f in m["per_layer"].values())
    # Cubic ramp over the whole run: 8 steps -> 8 updates, monotone, target at the last step.
    assert m["steps"] == 8 and m["mask_updates"] == 8
    assert seen["sparsity"] == sorted(seen["sparsity"]) and seen["sparsity"][0] > 0
    assert seen["sparsity"][-1] == pytest.approx(m["sparsity"])
    assert seen["sparsity"][3] == pytest.approx(cubic_sparsity(4, 8, 0.0, 0.8), abs=0.005)
    assert seen["zeros_hold"]
    assert seen["teacher_eval"] and all(seen["teacher_eval"])  # teacher dropout off (authors: on)
    assert set(m["loss_terms_mean"]) >= {"pred", "hidden", "attn"} and m["loss_terms_mean"]["attn"] > 0
    assert m["accuracy"] is not None and len(m["accuracy_per_epoch"]) == 2 and m["train_seconds"] > 0
    # The input artifact is untouched; the result is baked (no parametrizations) and saved.
    assert all(torch.equal(v, before[k]) for k, v in student.model.state_dict().items())
    assert not any("parametrizations" in k for k in res.artifact.model.state_dict())
    assert res.artifact.info["sparsity"] == m["sparsity"]
    folder = tmp_path / "model"
    reloaded = type(res.artifact.model).from_pretrained(folder)
    torch.testing.assert_close(logits(reloaded), logits(res.artifact.model), atol=1e-6, rtol=1e-5)
    assert json.loads((tmp_path / "sparsity.json").read_text())["overall"] == pytest.approx(m["sparsity"])


def test_structured_run_zeroes_whole_heads_and_neurons(pair, tmp_path):
    student, teacher = pair
    res = SparseBert(sparsity=0.6, granularity="structured", **FAST)(student, make_ctx(tmp_path, teacher))
    m = res.metrics
    assert abs(m["sparsity"] - 0.6) <= 0.005
    model = res.artifact.model
    for l, layer in enumerate(model.bert.encoder.layer):
        sa = layer.attention.self
        q = sa.query.weight.reshape(4, 8, -1)  # 4 heads of size 8
        alive = [bool(q[h].abs().sum() > 0) for h in range(4)]
        assert sum(alive) == m["per_layer"][str(l)]["heads"]
        for h in range(4):  # a dropped head: Q/K/V rows + biases and attention-output columns all 0
            if not alive[h]:
                for lin in (sa.query, sa.key, sa.value):
                    assert not lin.weight[h * 8:(h + 1) * 8].any() and not lin.bias[h * 8:(h + 1) * 8].any()
                assert not layer.attention.output.dense.weight[:, h * 8:(h + 1) * 8].any()
        rows = layer.intermediate.dense.weight.abs().sum(1) > 0
        assert int(rows.sum()) == m["per_layer"][str(l)]["neurons"]
        assert not layer.output.dense.weight[:, ~rows].any()
        assert not layer.intermediate.dense.bias[~rows].any()
    assert sum(v["heads"] for v in m["per_layer"].values()) < 8  # some heads went


def test_distillation_pulls_student_towards_teacher(pair, tmp_path):
    """With no pruning, distilling lowers every loss term w.r.t. the teacher."""
    from passes import _distill
    student, teacher = pair
    ids = X

    def distances(model):
        model.eval()
        with torch.no_grad(), _distill.ScoreCapture(model) as cs, _distill.ScoreCapture(teacher.model) as ct:
            s = model(input_ids=ids, output_hidden_states=True)
            t = teacher.model(input_ids=ids, output_hidden_states=True)
            att, _ = _distill.attention_mse(cs.scores(), ct.scores())
        return (_distill.kd_kl(s.logits, t.logits).item(),
                _distill.hidden_mse(s.hidden_states, t.hidden_states).item(), att.item())

    start = distances(student.model)
    res = SparseBert(sparsity=0.0, lr=1e-3, epochs=3, batch_size=8)(student, make_ctx(tmp_path, teacher))
    end = distances(res.artifact.model)
    assert all(e < s for e, s in zip(end, start)), (start, end)


def test_fewer_student_layers_use_uniform_mapping(tokenizer, tmp_path):
    student = TorchModel(make_tiny_model(layers=2, seed=0), tokenizer)
    teacher = TorchModel(make_tiny_model(layers=4, seed=1), tokenizer)
    res = SparseBert(sparsity=0.5, **FAST)(student, make_ctx(tmp_path, teacher, n_train=16))
    assert res.metrics["layer_map"] == [0, 2, 4]
    assert res.metrics["attention_layers_skipped"] == []
    assert abs(res.metrics["sparsity"] - 0.5) <= 0.005


def test_cli_run(tmp_path, tokenizer, capsys):
    code, out = run_method_cli(tmp_path, tokenizer, "sparsebert")
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert "finetune" in steps and "sparsebert" in steps and "export" in steps
    assert abs(steps["sparsebert"]["metrics"]["sparsity"] - 0.5) <= 0.005
    assert abs(report["models"]["compressed"]["sparsity"] - 0.5) <= 0.005
