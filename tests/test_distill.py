"""Distillation losses (passes/_distill.py) on hand-computed inputs and a tiny BERT."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from passes import _distill  # noqa: E402
from passes.families import family_of  # noqa: E402
from conftest import make_tiny_model  # noqa: E402


def test_soft_cross_entropy_hand_computed():
    # teacher p = [0.5, 0.5]; student p = [0.25, 0.75] (logits 0, ln 3).
    s = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.tensor([[1.0, 1.0]])
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) / 2  # mean over classes too
    assert _distill.soft_cross_entropy(s, t).item() == pytest.approx(want, rel=1e-6)
    # T = 2 divides both logits: student logits (0, ln3/2) -> p = (1/(1+sqrt3), sqrt3/(1+sqrt3)); no T^2.
    r = math.sqrt(3.0)
    want_t2 = -(0.5 * math.log(1 / (1 + r)) + 0.5 * math.log(r / (1 + r))) / 2
    assert _distill.soft_cross_entropy(s, t, 2.0).item() == pytest.approx(want_t2, rel=1e-6)


def test_soft_cross_entropy_batch_mean_and_no_teacher_grad():
    s = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = _distill.soft_cross_entropy(s, t)
    row1 = math.log(2.0) / 2
    row2 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) / 2
    assert loss.item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_kd_kl_hand_computed():
    s = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.tensor([[0.0, 0.0]])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert _distill.kd_kl(s, t).item() == pytest.approx(kl, rel=1e-6)
    assert _distill.kd_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # T^2 scaling: at T=2 the student distribution is (1/(1+r), r/(1+r)).
    r = math.sqrt(3.0)
    kl2 = 0.5 * math.log(0.5 * (1 + r)) + 0.5 * math.log(0.5 * (1 + r) / r)
    assert _distill.kd_kl(s, t, 2.0).item() == pytest.approx(4 * kl2, rel=1e-5)


def test_layer_map():
    assert _distill.layer_map(6, 6) == list(range(7))
    assert _distill.layer_map(4, 12) == [0, 3, 6, 9, 12]
    assert _distill.layer_map(2, 6) == [0, 3, 6]


def test_hidden_mse_sums_per_layer_including_embeddings():
    s = [torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)]
    t = [torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, 2)]
    # MSE per term: 1 (embeddings), 0, 4 -> 5.
    assert _distill.hidden_mse(s, t).item() == pytest.approx(5.0)
    # Uniform mapping, teacher has 4 layers: student j -> teacher 2j.
    t4 = [torch.full((1, 2, 2), float(i)) for i in range(5)]
    # j=0 vs 0: 0; j=1 (ones) vs 2: 1; j=2 (twos) vs 4: 4 -> 5.
    assert _distill.hidden_mse(s, t4).item() == pytest.approx(5.0)


def test_attention_mse_zeroes_padded_keys():
    mask = torch.tensor([[1, 1, 0]])
    a_s = torch.zeros(1, 1, 3, 3)
    a_t = torch.zeros(1, 1, 3, 3)
    a_s[..., 2] = -10000.0  # padded key column: huge, but zeroed in both
    a_t[..., 2] = -10003.0
    a_s[0, 0, 0, 0] = 3.0  # one real difference of 3 -> MSE = 9 / 9 elements
    loss, skipped = _distill.attention_mse([a_s], [a_t], mask)
    assert loss.item() == pytest.approx(1.0)
    assert skipped == []
    # Without the mask the padded column dominates.
    loss_nomask, _ = _distill.attention_mse([a_s], [a_t], None)
    assert loss_nomask.item() > 1.0


def test_attention_mse_heads_and_skips():
    a_t = torch.zeros(1, 2, 2, 2)
    a_s = torch.zeros(1, 2, 2, 2)
    a_s[:, 1] = 2.0  # only head 1 differs
    full, _ = _distill.attention_mse([a_s], [a_t])
    assert full.item() == pytest.approx(2.0)  # half the elements differ by 2 -> 4/2
    only0, _ = _distill.attention_mse([a_s], [a_t], heads=[[0]])
    assert only0.item() == pytest.approx(0.0)
    only1, _ = _distill.attention_mse([a_s], [a_t], heads=[[1]])
    assert only1.item() == pytest.approx(4.0)
    # A student layer with fewer heads (stripped) or none is skipped, not broadcast.
    loss, skipped = _distill.attention_mse([a_s[:, :1], None], [a_t, a_t])
    assert skipped == [0, 1] and loss.item() == 0.0


def _manual_scores(model, ids, mask):
    """Q K^T / sqrt(d) + (1 - mask) * -10000 computed by hand from the layer weights."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    scores = []
    for layer, h in zip(model.bert.encoder.layer, out.hidden_states[:-1]):
        sa = layer.attention.self
        d = sa.attention_head_size
        nh = sa.query.out_features // d
        q = (h @ sa.query.weight.T + sa.query.bias).view(*ids.shape, nh, d).transpose(1, 2)
        k = (h @ sa.key.weight.T + sa.key.bias).view(*ids.shape, nh, d).transpose(1, 2)
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(d) + (1.0 - mask[:, None, None, :]) * -10000.0)
    return scores


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return ids, mask


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_capture_matches_manual_and_hf_probabilities(impl):
    model = make_tiny_model(layers=2, hidden=32, heads=4)
    if impl == "sdpa":  # a fresh model built with sdpa attention (same seed, same weights)
        from transformers import BertForSequenceClassification
        model.config._attn_implementation = "sdpa"
        model = BertForSequenceClassification(model.config).eval()
        model.load_state_dict(make_tiny_model(layers=2, hidden=32, heads=4).state_dict())
    ids, mask = _batch()
    with torch.no_grad(), _distill.ScoreCapture(model) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=impl == "eager")
        got = cap.scores(mask)
        want = _manual_scores(model, ids, mask)
    assert len(got) == 2
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == (2, 4, 5, 5)
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        if impl == "eager":  # the captured scores are what the model softmaxes
            torch.testing.assert_close(torch.softmax(g, -1), out.attentions[i], atol=1e-6, rtol=1e-5)
    # Our hooks are removed on exit (transformers 5.x adds its own output-recording hooks).
    sa = model.bert.encoder.layer[0].attention.self
    assert not sa.query._forward_hooks and not sa.key._forward_hooks


def test_capture_uneven_and_removed_heads():
    model = make_tiny_model(layers=3, hidden=32, heads=4)
    layers = model.bert.encoder.layer
    family_of(model).keep_heads(layers[0], [1, 3])
    family_of(model).keep_heads(layers[1], [])
    ids, mask = _batch()
    with torch.no_grad(), _distill.ScoreCapture(model) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = cap.scores(mask)
    assert got[0].shape == (2, 2, 5, 5) and got[1] is None and got[2].shape == (2, 4, 5, 5)
    h = out.hidden_states[0]
    sa = layers[0].attention.self
    q = sa.query(h).view(2, 5, 2, 8).transpose(1, 2)
    k = sa.key(h).view(2, 5, 2, 8).transpose(1, 2)
    want = q @ k.transpose(-1, -2) / math.sqrt(8) + (1.0 - mask[:, None, None, :]) * -10000.0
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)


def test_attention_loss_gradient_reaches_query_key():
    student = make_tiny_model(layers=2, seed=0)
    teacher = make_tiny_model(layers=2, seed=1)
    ids, mask = _batch()
    with _distill.ScoreCapture(student) as cs, _distill.ScoreCapture(teacher) as ct:
        student(input_ids=ids, attention_mask=mask)
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=mask)
        loss, skipped = _distill.attention_mse(cs.scores(mask), ct.scores(mask), mask)
    loss.backward()
    assert loss.item() > 0 and skipped == []
    q = student.bert.encoder.layer[0].attention.self.query.weight
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.slow
def test_capture_on_real_minilm(tokenizer):
    """On all-MiniLM-L6-v2 (12 heads, 6 layers), softmax of the captured scores is exactly the
    attention probability HF computes, padded keys included."""
    from transformers import BertForSequenceClassification

    from conftest import minilm_dir
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=2, attn_implementation="eager", local_files_only=True).eval()
    enc = tokenizer(["a short one", "a somewhat longer sentence about a film"], padding=True,
                    return_tensors="pt")
    with torch.no_grad(), _distill.ScoreCapture(model) as cap:
        out = model(**enc, output_attentions=True)
        scores = cap.scores(enc["attention_mask"])
    assert len(scores) == 6 and scores[0].shape[1] == 12
    for s, p in zip(scores, out.attentions):
        torch.testing.assert_close(torch.softmax(s, -1), p, atol=1e-5, rtol=1e-4)
