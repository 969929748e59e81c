"""Hidden-size pruning: ``Family.keep_hidden`` per family (BERT, RoBERTa, ELECTRA with and without
its embedding projection, DistilBERT, DeBERTa-v3 and DeBERTa-v2 with position projections and the
first-layer convolution, ModernBERT, and a stripped BERT with a layer emptied of heads and one of
FFN neurons), the Fisher of the hidden mask, the saved folder reloaded, distillation of the
narrower student at the teacher's kept units, and ``hidden-prune`` through ``compress run`` with
export verification and INT8.

Equivalence: the pruned model equals the original run with the dropped units zeroed and every
LayerNorm computing its statistics over the kept units only (the reference is written here with
patched LayerNorms and forward hooks, not with the adapter)."""

from __future__ import annotations

import copy
import functools
import json

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
import onnx  # noqa: E402

from compressor.artifact import TorchModel  # noqa: E402
from compressor.errors import ConfigError  # noqa: E402
from conftest import make_tiny_model, make_toy_task, minilm_dir, randomize_linears  # noqa: E402
from passes.families import family_of  # noqa: E402
from passes.strip import layer_sizes  # noqa: E402

WIDTH = 20  # of 32 hidden units
FAMILIES = ["bert", "bert-stripped", "roberta", "electra-proj", "electra", "distilbert", "deberta-v3",
            "deberta-unshared", "modernbert"]


@functools.lru_cache(maxsize=None)
def minilm_tokenizer(input_names=None):
    from transformers import AutoTokenizer
    kw = {"model_input_names": list(input_names)} if input_names else {}
    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True, **kw)


def randomize_norms(model, seed=1):
    """Every LayerNorm's weight and bias redrawn (seeded), so that a wrongly sliced norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g) if p is m.weight else
                                0.3 * torch.randn(p.shape, generator=g))
    return model


def build(name: str) -> TorchModel:
    """A tiny seeded classifier of family ``name`` (hidden 32) and its tokenizer."""
    if name.startswith("bert"):
        model = randomize_linears(make_tiny_model(layers=3).eval())
        if name == "bert-stripped":
            fam = family_of(model)
            fam.keep_heads(fam.layers()[1], [])
            fam.keep_heads(fam.layers()[0], [0, 2])
            fam.keep_ffn(fam.layers()[2], [])
            fam.keep_ffn(fam.layers()[0], list(range(0, 64, 3)))
            model.config.compressor_layers = layer_sizes(model)  # as strip records them
        tok = minilm_tokenizer()
    elif name == "roberta":
        from test_family_roberta import FAMILIES as KINDS, make_model, make_tokenizer
        tok = make_tokenizer(KINDS["roberta"])
        model = make_model("roberta", tok, layers=2)
    elif name.startswith("electra"):
        from test_family_electra import make_model
        tok = minilm_tokenizer()
        model = make_model(tok, layers=2, embedding_size=16 if name == "electra-proj" else 32)
    elif name == "distilbert":
        from test_family_distilbert import make_tiny_distilbert
        tok = minilm_tokenizer(("input_ids", "attention_mask"))
        model = randomize_linears(make_tiny_distilbert(layers=2, vocab_size=len(tok)))
    elif name.startswith("deberta"):
        from test_family_deberta import make_model, make_tokenizer
        tok = make_tokenizer()
        model = make_model(tok, name.split("-")[1], layers=2)
    else:
        from test_family_modernbert import make_model, make_tokenizer
        tok = make_tokenizer()
        model = make_model(tok, layers=3, bias=True)
    return TorchModel(randomize_norms(model.eval()), tok, {"source": f"tiny-{name}"})


def inputs(tokenizer):
    """Three texts padded to the longest (a padded row), one pair of texts (token types where taken)."""
    rows = [e.text for e in make_toy_task(n_train=8, n_eval=0, seed=3).train]
    return [dict(tokenizer(rows[:3], padding="longest", return_tensors="pt")),
            dict(tokenizer(rows[3:4], rows[4:5], return_tensors="pt"))]


def outputs(model, batches):
    with torch.no_grad():
        return [model(**b).logits for b in batches]


def kept_units(seed=0, width=WIDTH, hidden=32) -> list[int]:
    return sorted(torch.randperm(hidden, generator=torch.Generator().manual_seed(seed))[:width].tolist())


def reference(model, kept: list[int], hidden: int = 32):
    """``model`` with every hidden-wide LayerNorm normalizing over ``kept`` only (zeros elsewhere),
    the dropped outputs of the poolers and of ELECTRA's embedding projection zeroed, and DeBERTa's
    un-normalized relative position embeddings zeroed at the dropped units."""
    ref = copy.deepcopy(model)
    keep = torch.tensor(kept)
    drop = torch.ones(hidden, dtype=torch.bool)
    drop[keep] = False

    def norm_over_kept(m, x):
        y = torch.zeros_like(x)
        w = m.weight[keep] if m.weight is not None else None
        b = m.bias[keep] if m.bias is not None else None
        y[..., keep] = F.layer_norm(x[..., keep], (len(kept),), w, b, m.eps)
        return y

    def zero_dropped(module, args, out):
        return out.masked_fill(drop.to(out.device), 0.0)

    for name, m in ref.named_modules():
        if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (hidden,):
            m.forward = functools.partial(norm_over_kept, m)
        if isinstance(m, nn.Linear) and m.out_features == hidden and \
                name.endswith(("embeddings_project", "pre_classifier", "pooler.dense", "head.dense")):
            m.register_forward_hook(zero_dropped)
    enc = getattr(getattr(ref, "deberta", None), "encoder", None)
    if enc is not None and getattr(enc, "rel_embeddings", None) is not None and not hasattr(enc, "LayerNorm"):
        with torch.no_grad():
            enc.rel_embeddings.weight[:, drop] = 0.0
    return ref


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    return request.param, build(request.param)


def test_keep_hidden_shapes_and_config(case):
    name, art = case
    model = copy.deepcopy(art.model)
    fam = family_of(model)
    layers = fam.layers()
    sizes = [fam.layer_sizes(layer) for layer in layers]
    head_size = fam.head_size(layers[0])
    kept = kept_units()
    fam.keep_hidden(kept)
    assert fam.hidden_size() == WIDTH and model.config.hidden_size == WIDTH
    assert model.config.compressor_hidden == {"dense": model.config.compressor_hidden["dense"], "kept": kept}
    assert model.config.compressor_hidden["dense"]["hidden_size"] == 32
    assert [fam.layer_sizes(layer) for layer in fam.layers()] == sizes  # heads and FFN widths stay
    assert fam.head_size(fam.layers()[0]) == head_size
    for layer, (heads, ffn) in zip(fam.layers(), sizes):
        for role in ("query", "key", "value", "ffn_in"):
            m = fam.linear(layer, role)
            if isinstance(m, nn.Linear):
                assert m.in_features == WIDTH and m.weight.shape[1] == WIDTH
        if heads:
            assert fam.linear(layer, "attn_out").weight.shape == (WIDTH, heads * head_size)
        if ffn:
            assert fam.linear(layer, "ffn_out").weight.shape == (WIDTH, ffn)
    narrow = {tuple(m.normalized_shape) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    assert narrow == ({(WIDTH,), (16,)} if name == "electra-proj" else {(WIDTH,)})
    emb = fam.word_table().embedding_dim
    assert emb == (16 if name == "electra-proj" else WIDTH)
    if name.startswith("electra"):
        assert model.config.embedding_size == (16 if name == "electra-proj" else WIDTH)
    if name == "electra-proj":
        assert fam.embeddings_project().weight.shape == (WIDTH, 16)
    if name == "distilbert":
        assert model.config.dim == WIDTH and model.pre_classifier.weight.shape == (WIDTH, WIDTH)
    if name.startswith("deberta"):
        assert model.deberta.encoder.rel_embeddings.embedding_dim == WIDTH
        assert model.config.pooler_hidden_size == WIDTH and model.pooler.dense.weight.shape == (WIDTH, WIDTH)
    if name == "deberta-unshared":
        assert model.deberta.encoder.conv.conv.weight.shape[:2] == (WIDTH, WIDTH)
        assert fam.layers()[0].attention.self.pos_key_proj.in_features == WIDTH
    if name == "modernbert":
        assert fam.layers()[1].mlp.Wi.gate.in_features == WIDTH and model.head.dense.weight.shape == (WIDTH, WIDTH)
    if name == "roberta":
        assert model.classifier.dense.weight.shape == (32, WIDTH) and model.classifier.out_proj.in_features == 32
    if name.startswith("bert"):
        assert model.bert.pooler.dense.weight.shape == (WIDTH, WIDTH) and model.classifier.in_features == WIDTH


def test_keep_all_is_identical_and_a_subset_matches_the_reference(case):
    name, art = case
    batches = inputs(art.tokenizer)
    dense = outputs(art.model, batches)
    every = copy.deepcopy(art.model)
    family_of(every).keep_hidden(range(32))
    for a, b in zip(outputs(every, batches), dense):
        assert torch.equal(a, b)
    kept = kept_units(seed=4)
    pruned = copy.deepcopy(art.model)
    family_of(pruned).keep_hidden(kept)
    expected = outputs(reference(art.model, kept), batches)
    for a, b, d in zip(outputs(pruned, batches), expected, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert (a - d).abs().max() > 1e-3  # the units mattered


def test_saved_folder_reloads_to_the_same_logits(case, tmp_path):
    from compressor.models import load_model
    name, art = case
    model = copy.deepcopy(art.model)
    family_of(model).keep_hidden(kept_units(seed=2))
    family_of(model).keep_hidden(list(range(0, WIDTH, 2)))  # twice: kept units compose
    first = kept_units(seed=2)
    assert model.config.compressor_hidden["kept"] == first[0:WIDTH:2]
    TorchModel(model, art.tokenizer).save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved.get("hidden_size", saved.get("dim")) == WIDTH // 2 and saved["compressor_hidden"]["kept"] == first[0:WIDTH:2]
    back = load_model(str(tmp_path / "m"), num_labels=2)
    assert back.model.config.compressor_hidden == model.config.compressor_hidden
    assert family_of(back.model).hidden_size() == WIDTH // 2
    batches = inputs(art.tokenizer)
    for a, b in zip(outputs(back.model, batches), outputs(model, batches)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_fisher_of_a_dead_unit_is_zero_and_of_a_live_one_positive(case):
    from passes.hidden_prune import hidden_importance
    name, art = case
    model = copy.deepcopy(art.model)
    fam = family_of(model)
    dead = 5
    with torch.no_grad():
        for module, side in fam.hidden_modules():
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if p is None:
                    continue
                if side in ("out", "both") and (p.dim() == 1 or not isinstance(module, nn.Embedding)):
                    p[dead] = 0.0
                if (side in ("in", "both") or isinstance(module, nn.Embedding)) and p.dim() >= 2:
                    p[:, dead] = 0.0
    before = copy.deepcopy(model.state_dict())
    rows = make_toy_task(n_train=16, n_eval=0).train
    importance = hidden_importance(model, art.tokenizer, rows, max_length=24, batch_size=8)
    assert importance.shape == (32,)
    assert float(importance[dead]) == 0.0
    assert bool((importance[torch.arange(32) != dead] > 0).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left alone


def test_options_and_widths():
    from passes.hidden_prune import HiddenPrune, target_width
    assert target_width(768, width=256) == 256 and target_width(768, width=250) == 256
    assert target_width(768, keep=0.5) == 384 and target_width(128, keep=0.5) == 64
    for bad in ({"width": 300}, {"keep": 0.4}):
        with pytest.raises(ConfigError, match=r"out of range: allowed \[64, 128\]"):
            target_width(128, **bad)
    for opts, match in (({}, "needs one of width"), ({"width": 64, "keep": 0.5}, "needs one of width"),
                        ({"width": 40}, r"width=40 is out of range: allowed \[64"),
                        ({"keep": 1.5}, "keep")):
        with pytest.raises(ConfigError, match=match):
            HiddenPrune(**opts)
    assert HiddenPrune(width=64).to_spec() == "hidden-prune{width=64}"


def test_distill_compares_the_teacher_at_the_kept_units():
    from passes._distill import LogitKD, hidden_mse, teacher_units
    teacher = randomize_linears(make_tiny_model().eval())
    student = copy.deepcopy(teacher)
    kept = kept_units(seed=7)
    family_of(student).keep_hidden(kept)
    units = teacher_units(student, teacher)
    assert units.tolist() == kept and teacher_units(teacher, copy.deepcopy(teacher)) is None
    with pytest.raises(ValueError, match="teacher does not have"):
        teacher_units(teacher, student)
    batch = dict(minilm_tokenizer()(["a film", "the plot was long"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        t_hidden = teacher(**batch, output_hidden_states=True).hidden_states
    assert float(hidden_mse([h[..., kept] for h in t_hidden], t_hidden, units=units)) == 0.0
    kd = LogitKD(None, hidden_weight=1.0, teacher=teacher)
    out = student(**batch, **kd.forward_kwargs)
    loss = kd(student, {**batch, "labels": torch.tensor([0, 1])}, out)
    loss.backward()
    assert torch.isfinite(loss) and float(loss) > 0


def write_run_inputs(root, hidden=128):
    """A tiny BERT (hidden 128, 2 layers, 4 heads, FFN 128) with the MiniLM tokenizer, and the toy task."""
    from conftest import write_tsv
    task = make_toy_task(n_train=48, n_eval=16)
    model_dir = root / "tiny"
    make_tiny_model(hidden=hidden, ffn=128).save_pretrained(model_dir)
    minilm_tokenizer().save_pretrained(model_dir)
    return model_dir, write_tsv(root / "train.tsv", task.train), write_tsv(root / "eval.tsv", task.eval)


def test_compress_run_pipeline_end_to_end(tmp_path):
    """finetune, fisher, hidden-prune, distill with hidden-state KD, export (verified against
    PyTorch), INT8; the report records the kept units; the step folder reloads."""
    from compressor.cli import main
    model_dir, train, evals = write_run_inputs(tmp_path)
    out = tmp_path / "run"
    spec = ("finetune{epochs=1},fisher{flops=0.8,samples=32,tune=false},hidden-prune{width=64,samples=32},"
            "distill{epochs=1,min_steps=0,kd_hidden=1},export,quantize")
    code = main(["run", str(model_dir), "--pipeline", spec, "--train", str(train), "--eval", str(evals),
                 "--max-length", "32", "--runs", "2", "--batch-sizes", "1", "--seq-lens", "16", "-o", str(out),
                 "--quiet"])
    assert code == 0
    from compressor.models import load_model
    steps = {s["name"]: s for s in json.loads((out / "report.json").read_text())["steps"]}
    assert list(steps) == ["finetune", "fisher", "hidden-prune", "distill", "export", "quantize"]
    m = steps["hidden-prune"]["metrics"]
    assert m["hidden_before"] == 128 and m["hidden_after"] == 64 and len(set(m["hidden_kept"])) == 64
    assert m["params_after"] < m["params_before"] and m["encoder_flops_reduction"] > 0
    assert steps["distill"]["metrics"]["kd_hidden"] == 1.0
    assert steps["export"]["metrics"]["max_abs_diff"] <= 1e-4
    assert steps["quantize"]["metrics"]["quant_ops"]["MatMulInteger"] > 0
    for step in ("03-hidden-prune", "04-distill/model"):
        back = load_model(str(out / step))
        assert back.model.config.hidden_size == 64
        assert back.model.config.compressor_hidden["kept"] == m["hidden_kept"]


@pytest.mark.parametrize("name", ["deberta-v3", "distilbert", "modernbert"])
def test_narrower_families_compose_with_vocab_prune_export_and_int8(name, tmp_path):
    """DeBERTa-v3 (hidden 128) through hidden-prune and hidden-state distillation; DistilBERT and
    ModernBERT narrowed by the adapter: then vocab-prune, export (verified), INT8 embeddings, INT8."""
    from compressor.context import RunContext
    from compressor.pipeline import Pipeline
    task = make_toy_task(n_train=32, n_eval=16)
    spec = "vocab-prune,export,embed-int8,quantize"
    if name == "deberta-v3":
        from test_family_deberta import make_model, make_tokenizer
        model = make_model(make_tokenizer(), "v3", layers=2, hidden=128)
        with torch.no_grad():  # the family test's unit-scale weights, at 4x the width: half the scale
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    m.weight.mul_(0.5)
        dense = TorchModel(model, make_tokenizer())
        spec = "hidden-prune{width=64,samples=16},distill{epochs=1,min_steps=0,kd_hidden=1}," + spec
        art = dense
    else:
        dense = build(name)
        art = TorchModel(copy.deepcopy(dense.model), dense.tokenizer)
        family_of(art.model).keep_hidden(kept_units(seed=5, width=16))
    ctx = RunContext(tmp_path / "run", data=task, teacher=dense, progress=False, max_length=32)
    res = Pipeline(spec).run(art, ctx)
    metrics = {r.name: r.metrics for r in res.records}
    assert metrics["export"]["max_abs_diff"] <= 1e-4
    assert metrics["embed-int8"]["size_bytes"] < metrics["export"]["size_bytes"]
    ops = {n.op_type for n in onnx.load(str(res.artifact.path)).graph.node}  # the narrow model's INT8 graph
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops
    if name == "deberta-v3":
        assert metrics["hidden-prune"]["hidden_after"] == 64 and metrics["distill"]["kd_hidden"] == 1.0


def test_bad_option_exits_2_with_one_line(tmp_path, capsys):
    from compressor.cli import main
    code = main(["run", "minilm", "--pipeline", "finetune,hidden-prune{width=40},export"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "width=40 is out of range" in err[0]


def test_hidden_width_flag_recipe_and_api(tmp_path, capsys):
    """``--hidden-width N`` (RunConfig, recipe ``method.hidden_width``, ``compress(hidden_width=N)``)
    puts hidden-prune after the method and its strip, and recovery then distils hidden states."""
    from compressor.api import compress
    from compressor.cli import main
    from compressor.config import RunConfig
    from compressor.recipe import parse_recipe
    from compressor.run import method_spec
    spec = method_spec(RunConfig(model="minilm", method="fisher", hidden_width=256, recover=True))
    assert "fisher{max_length=64},hidden-prune{width=256,max_length=64},distill{" in spec
    assert "kd_hidden=1.0" in spec.split("distill")[1]
    spec = method_spec(RunConfig(model="minilm", method="magnitude", granularity="structured", hidden_width=128))
    assert ",strip,hidden-prune{width=128,max_length=64},export" in spec
    assert "hidden-prune" not in method_spec(RunConfig(model="minilm", method="fisher"))
    # with --speedup the search times its table at that width: the asked speedup counts the narrowing
    spec = method_spec(RunConfig(model="minilm", method="fisher", speedup=2.0, hidden_width=320))
    assert "hidden=320" in spec.split("},")[0] and "hidden-prune{width=320" in spec
    assert "hidden=" not in method_spec(RunConfig(model="minilm", method="fisher", speedup=2.0))
    assert parse_recipe("method: {name: fisher, hidden_width: 192}\n")["hidden_width"] == 192
    with pytest.raises(ConfigError, match="hidden_width=32 is out of range"):
        compress("minilm", method="fisher", hidden_width=32, output=str(tmp_path / "o"))
    code = main(["run", "minilm", "--method", "fisher", "--hidden-width", "32", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hidden_width=32 is out of range" in err[0]
