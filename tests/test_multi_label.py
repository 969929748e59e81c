"""Multi-label sequence classification through the whole path: label lists (JSONL, detected), text
cells ``a,b`` / ``a|b`` with ``--task-type multi-label`` and 0/1 columns (``--columns labels=I:J``),
bad input as one line (exit 2), a sigmoid head with BCE and per-label KD, micro F1 at one threshold
chosen on dev (hand-computed cases), dev selection, export with a verified ``[B, L]`` output that
Optimum and ``pipeline("text-classification")`` load, ONNX scoring with intervals, the report, and
every method. The tiny task's labels are which marker words a text holds (one slot per label: its
marker or a neutral word, then a filler), which a tiny model learns in a few epochs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from compressor.data import Example, TaskData, load_task
from compressor.errors import CompressorError, DataError
from compressor.metrics import (MultiHot, choose_threshold, is_embedding, is_multi_label, majority_accuracy,
                                multi_label_counts, multi_label_scores)

LABELS = ["food", "music", "sport", "travel"]
MARKERS = {"food": "pizza", "music": "guitar", "sport": "football", "travel": "airport"}
NEUTRAL = {"food": "salad", "music": "drum", "sport": "chess", "travel": "hotel"}
FILLER = ["the", "a", "we", "today", "with", "friends", "and", "it"]


def _row(rng: random.Random) -> tuple[str, list[str]]:
    chosen = [name for name in LABELS if rng.random() < 0.35]
    words = [MARKERS[name] if name in chosen else NEUTRAL[name] for name in LABELS] + rng.sample(FILLER, 1)
    return " ".join(words), chosen


def marker_rows(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [_row(rng) for _ in range(n)]


def make_marker_task(n_train=160, n_eval=48, seed=0) -> TaskData:
    def examples(rows):
        return [Example(text, MultiHot(int(name in chosen) for name in LABELS)) for text, chosen in rows]
    rows = marker_rows(n_train + n_eval, seed)
    return TaskData("markers", examples(rows[:n_train]), examples(rows[n_train:]), list(LABELS),
                    task_type="multi-label")


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps({"text": text, "labels": chosen}) + "\n" for text, chosen in rows))
    return str(path)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- readers ------------------------------------------------------------------------------------
def test_jsonl_label_lists_are_detected(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [("pizza today", ["food"]), ("guitar and football", ["music", "sport"]),
                                              ("nothing here", []), ("an airport", ["travel"])])
    evals = write_jsonl(tmp_path / "e.jsonl", [("pizza guitar", ["food", "music"])])
    data = load_task(train_file=train, eval_file=evals)
    assert data.task_type == "multi-label" and data.multi_label and data.label_names == LABELS
    assert [tuple(e.label) for e in data.train] == [(1, 0, 0, 0), (0, 1, 1, 0), (0, 0, 0, 0), (0, 0, 0, 1)]
    assert data.eval[0].label == (1, 1, 0, 0) and isinstance(data.eval[0].label, MultiHot)
    assert is_multi_label(data.train) and not is_embedding(data.train) and majority_accuracy(data.eval) == 0.0
    assert data.info["train_label_counts"] == [1, 1, 1, 1] and data.info["task_type"] == "multi-label"


def test_text_cells_with_task_type(tmp_path):
    tsv = write(tmp_path / "t.tsv", "sentence\tlabel\npizza guitar\tfood,music\nfootball\tsport\nnone\t\n"
                                    "an airport\ttravel|food\n")
    data = load_task(train_file=tsv, eval_file=tsv, task_type="multi-label")
    assert data.label_names == ["food", "music", "sport", "travel"]
    assert [tuple(e.label) for e in data.train] == [(1, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0), (1, 0, 0, 1)]
    ids = write(tmp_path / "i.csv", "text,label\na,2|10\nb,1\n")  # numbers sort as numbers
    assert load_task(train_file=ids, eval_file=ids, task_type="multi-label").label_names == ["1", "2", "10"]


def test_zero_one_columns(tmp_path):
    headerless = write(tmp_path / "f.tsv", "pizza\t1\t0\t0\nguitar pizza\t1\t1\t0\nnone\t0\t0\t0\n")
    data = load_task(train_file=headerless, eval_file=headerless, columns="text=0,labels=1:3")
    assert data.multi_label and data.label_names == ["1", "2", "3"]
    assert [tuple(e.label) for e in data.train] == [(1, 0, 0), (1, 1, 0), (0, 0, 0)]
    named = write(tmp_path / "n.csv", "id,text,toxic,insult,threat\n1,you fool,1,1,0\n2,hello,0,0,0\n")
    data = load_task(train_file=named, eval_file=named, columns="text=text,labels=toxic+insult+threat")
    assert data.label_names == ["toxic", "insult", "threat"] and data.train[0].label == (1, 1, 0)


@pytest.mark.parametrize("train, evals, kwargs, match", [
    ('{"text": "a", "labels": ["x", "y"]}\n', '{"text": "b", "labels": ["z"]}\n', {},
     r"label 'z' in '.*e\.jsonl' is not in the train file's labels: allowed x, y"),
    ('{"text": "a", "labels": ["x", "y"]}\n', None, {"task_type": "classification"},
     r"--task-type classification contradicts data file .*t\.jsonl.*label lists"),
    ('{"text": "a", "labels": ["x", "y"]}\n', None, {"task_type": "regression"}, r"--task-type regression contradicts"),
    ('{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": []}\n', None, {},
     r"has 1 distinct label\(s\) \['x'\]: a multi-label task needs at least 2"),
    ('{"text": "a", "labels": ["x", 1.5]}\n', None, {}, r"line 1 has entry 1\.5 in its label list"),
    ('{"text": "a", "labels": ["x", "x"]}\n', None, {}, r"line 1 has a label twice"),
    ('{"text": "a", "label": 1}\n', '{"text": "b", "labels": ["x", "y"]}\n', {}, r"has label lists .* one label a row"),
])
def test_bad_input_is_one_line(tmp_path, train, evals, kwargs, match):
    t = write(tmp_path / "t.jsonl", train)
    e = write(tmp_path / "e.jsonl", evals) if evals else t
    with pytest.raises(DataError, match=match) as err:
        load_task(train_file=t, eval_file=e, **kwargs)
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_zero_one_columns_refuse_other_values(tmp_path):
    good = write(tmp_path / "g.tsv", "a\t1\t0\nb\t0\t1\n")
    bad = write(tmp_path / "b.tsv", "a\t1\t0\nb\tyes\t1\n")
    with pytest.raises(DataError, match=r"b\.tsv': line 2 has 'yes' in label column '1': allowed 0 or 1") as err:
        load_task(train_file=good, eval_file=bad, columns="text=0,labels=1:2")
    assert err.value.exit_code == 2
    for spec, why in [("text=0,labels=2:1", "not a range"), ("text=0,labels=1", "fewer than 2 columns"),
                      ("text=0,label=1,labels=1:2", "label and labels given together")]:
        with pytest.raises(DataError, match=why):
            load_task(train_file=good, eval_file=good, columns=spec)
    with pytest.raises(DataError, match="--task-type classification contradicts"):
        load_task(train_file=good, eval_file=good, columns="text=0,labels=1:2", task_type="classification")


def test_empty_label_list_is_an_all_negative_row(tmp_path):
    t = write_jsonl(tmp_path / "t.jsonl", [("a", ["x"]), ("b", []), ("c", ["y"])])
    assert load_task(train_file=t, eval_file=t).train[1].label == (0, 0)


def test_dev_split_stratified_by_rarest_label():
    task = make_marker_task(n_train=200, n_eval=10)
    split = task.carve_dev(40, seed=0)
    assert split.multi_label and split.info["dev_split"] == "stratified by rarest label, whole texts"
    assert not {e.text for e in split.dev} & {e.text for e in split.train}
    assert all(any(e.label[j] for e in split.dev) for j in range(len(LABELS)))  # every label reaches dev


# -- the metric, hand-computed -------------------------------------------------------------------
GOLD = [(1, 0, 1), (0, 0, 0), (0, 1, 0), (1, 1, 0)]
PROBS = [[0.9, 0.2, 0.4], [0.6, 0.1, 0.1], [0.3, 0.7, 0.2], [0.8, 0.45, 0.05]]


def test_micro_and_macro_f1_hand_computed():
    # at 0.5: predicted (1,0,0) (1,0,0) (0,1,0) (1,0,0); tp 1+0+1+1 = 3, predicted 4, gold 5
    assert multi_label_counts(PROBS, GOLD, 0.5) == [(1, 1, 2), (0, 1, 0), (1, 1, 1), (1, 1, 2)]
    s = multi_label_scores(PROBS, GOLD, 0.5)
    assert s["micro_f1"] == pytest.approx(2 * 3 / (4 + 5))
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 5)
    # per label: 0: tp 2, pred 3, gold 2 -> 4/5; 1: tp 1, pred 1, gold 2 -> 2/3; 2: tp 0, pred 0, gold 1 -> 0
    assert s["macro_f1"] == pytest.approx((4 / 5 + 2 / 3 + 0) / 3)
    none = multi_label_scores(PROBS, GOLD, 0.99)  # nothing predicted: the trivial baseline
    assert none["micro_f1"] == 0.0 and none["macro_f1"] == 0.0
    assert multi_label_scores([[0.1, 0.2]], [(0, 0)], 0.5)["micro_f1"] == 0.0  # nothing gold nor predicted


def test_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(3)
    gold = [[int(rng.random() < 0.3) for _ in range(5)] for _ in range(60)]
    probs = [[min(1.0, max(0.0, g * 0.6 + rng.random() * 0.5)) for g in row] for row in gold]
    pred = [[int(p >= 0.4) for p in row] for row in probs]
    s = multi_label_scores(probs, gold, 0.4)
    assert s["micro_f1"] == pytest.approx(metrics.f1_score(gold, pred, average="micro", zero_division=0))
    assert s["macro_f1"] == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0))


def test_threshold_is_the_best_on_the_rows_it_is_given():
    # 0.4 (and 0.35): rows 1 and 4 gain their second label -> tp 5, predicted 6, gold 5: F1 10/11;
    # 0.45: only row 4 gains it, F1 8/10; 0.3: row 3 gains a wrong one, F1 10/12. The tie goes to 0.4
    assert [multi_label_scores(PROBS, GOLD, t)["micro_f1"] for t in (0.3, 0.35, 0.4, 0.45)] == \
        pytest.approx([10 / 12, 10 / 11, 10 / 11, 8 / 10])
    assert choose_threshold(PROBS, GOLD) == 0.4
    assert choose_threshold([[0.9, 0.1]], [(1, 0)]) == 0.5  # every t in 0.15..0.9 is perfect: nearest 0.5
    assert choose_threshold([[0.9, 0.1]], [(1, 0)], grid=(0.3, 0.7)) == 0.3  # equally near: the lower
    assert choose_threshold([], []) == 0.5


def test_f1_interval_over_rows():
    import numpy as np
    from compressor.stats import f1_interval, paired_bootstrap_f1
    a = np.asarray(multi_label_counts(PROBS * 10, GOLD * 10, 0.4))
    b = np.asarray(multi_label_counts(PROBS * 10, GOLD * 10, 0.5))
    low, high = f1_interval(a, resamples=2000)
    assert low <= 10 / 11 <= high < 1
    d = paired_bootstrap_f1(a, b, resamples=2000)
    assert d["diff"] == pytest.approx(10 / 11 - 2 / 3) and d["low"] <= d["diff"] <= d["high"] and d["n"] == 40


# -- losses --------------------------------------------------------------------------------------
def test_task_loss_is_bce_and_kd_is_per_label_bce():
    import torch
    import torch.nn.functional as F
    from passes._distill import LogitKD, kd_kl, soft_cross_entropy, task_loss
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]])
    bce = F.binary_cross_entropy_with_logits(z_s, labels)
    assert float(task_loss(z_s, labels)) == pytest.approx(float(bce))
    kd = F.binary_cross_entropy_with_logits(z_s / 2, torch.sigmoid(z_t / 2)) * 4
    assert float(kd_kl(z_s, z_t, 2.0, labels=labels)) == pytest.approx(float(kd))
    assert float(soft_cross_entropy(z_s, z_t, 2.0, labels=labels)) == pytest.approx(float(kd))
    mixed = LogitKD(z_t, temperature=2.0, hardness=0.5)
    out = type("Out", (), {"logits": z_s})()
    loss = mixed(None, {"idx": torch.tensor([0, 1, 2]), "labels": labels}, out)
    assert float(loss) == pytest.approx(0.5 * float(kd) + 0.5 * float(bce))
    # a row without labels (NaN: augmented text) enters KD only
    unl = labels.clone()
    unl[1] = float("nan")
    loss = mixed(None, {"idx": torch.tensor([0, 1, 2]), "labels": unl}, out)
    rows = [0, 2]
    assert float(loss) == pytest.approx(0.5 * float(kd) + 0.5 * float(
        F.binary_cross_entropy_with_logits(z_s[rows], labels[rows])))


def test_cap_objective_has_no_supervised_term_on_label_sets():
    import torch
    from passes.cap.contrastive import CapObjective
    obj = CapObjective(torch.zeros(3), w_ce=1.0, w_kd=1.0)
    z = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]])
    obj(z, labels, teacher_logits=z.detach().clone()).backward()
    assert set(obj.last) == {"ce", "kd"} and z.grad is not None


# -- a tiny model learns the task ------------------------------------------------------------------
def make_tiny_multi_label(seed=0):
    from tests.conftest import make_tiny_model
    model = make_tiny_model(num_labels=len(LABELS), seed=seed)
    model.config.problem_type = "multi_label_classification"
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {name: i for i, name in enumerate(LABELS)}
    return model


@pytest.fixture(scope="module")
def marker_task():
    return make_marker_task().carve_dev(40, seed=0)


@pytest.fixture(scope="module")
def teacher(tokenizer, marker_task):
    """A tiny multi-label model fine-tuned on the task (high LR, small batches: seconds)."""
    import tempfile

    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from passes._train import train
    model = make_tiny_multi_label()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp), data=marker_task, progress=False)
        res = train(model, tokenizer, marker_task, ctx, epochs=8, lr=1e-2, batch_size=8, max_length=16,
                    checkpoint_every=0)
    return TorchModel(model, tokenizer, {"source": "tiny-multi-label"}), res


def test_tiny_model_learns_with_micro_f1_selection(teacher, marker_task):
    from compressor.evaluation import evaluate
    tm, res = teacher
    assert res.selection == "dev" and res.best_accuracy == max(e["dev_accuracy"] for e in res.epochs)
    last = res.epochs[-1]
    assert last["dev_metric"] == "micro_f1" and last["dev_majority"] == 0.0 and last["dev_top_share"] is None
    assert last["dev_threshold"] in [round(0.05 * k, 2) for k in range(1, 20)] and 0 <= last["dev_macro_f1"] <= 1
    # predicting every label scores 2p / (1 + p) at a positive rate p ~0.35: about 0.52
    assert res.best_accuracy > 0.7, [e["dev_accuracy"] for e in res.epochs]
    kept = next(e for e in res.epochs if e["epoch"] == res.best_epoch)  # eval is scored at the dev threshold
    f1 = evaluate(tm.model, tm.tokenizer, marker_task.eval, 16, threshold=kept["dev_threshold"])
    assert f1 == pytest.approx(res.accuracy, abs=1e-6) and f1 > 0.6, f1


def test_fisher_importance_from_the_bce_loss(teacher, marker_task):
    from tests.conftest import fisher_mask_gradients
    gh, _ = fisher_mask_gradients(teacher[0].model, teacher[0].tokenizer, marker_task.train[:32])
    assert gh.shape[0] == 2 and float(gh.abs().sum()) > 0 and bool(gh.isfinite().all())


def test_load_model_multi_label_head_and_resume(tmp_path, tokenizer):
    from compressor.models import load_model
    from compressor.resume import _load_torch
    from tests.conftest import make_tiny_model
    make_tiny_model().save_pretrained(tmp_path / "seq")  # two classes: the head is replaced
    tokenizer.save_pretrained(tmp_path / "seq")
    tm = load_model(str(tmp_path / "seq"), num_labels=4, label_names=LABELS, problem_type="multi_label_classification")
    assert tm.model.config.problem_type == "multi_label_classification" and tm.model.config.num_labels == 4
    tm.model.save_pretrained(tmp_path / "ml")
    tokenizer.save_pretrained(tmp_path / "ml")
    back = _load_torch(tmp_path / "ml", {})
    assert back.model.config.problem_type == "multi_label_classification"
    assert load_model(str(tmp_path / "ml"), num_labels=4).model.config.problem_type is None  # a classifier again


# -- export --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(teacher, marker_task, tmp_path_factory):
    from compressor.context import RunContext
    from passes.export_onnx import Export
    root = tmp_path_factory.mktemp("ml-export")
    ctx = RunContext(root, data=marker_task, max_length=16)
    ctx.step_dir = root / "export"
    return Export()(teacher[0], ctx)


def test_exported_logits_equal_torch(exported, teacher, marker_task):
    import numpy as np
    from compressor.evaluation import predict_logits
    from compressor.onnx_utils import onnx_logits
    assert exported.metrics["max_abs_diff"] <= 1e-4
    rows = marker_task.eval[:20]
    ort = onnx_logits(exported.artifact, rows, max_length=16)
    torch_logits = predict_logits(teacher[0].model, teacher[0].tokenizer, rows, 16).numpy()
    assert ort.shape == (20, len(LABELS))
    np.testing.assert_allclose(ort, torch_logits, atol=1e-4, rtol=1e-4)


def test_exported_folder_runs_in_optimum_and_the_pipeline(exported, teacher):
    pytest.importorskip("optimum.onnxruntime")
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline
    folder = exported.artifact.path.parent
    assert json.loads((folder / "config.json").read_text())["problem_type"] == "multi_label_classification"
    model = ORTModelForSequenceClassification.from_pretrained(str(folder))
    classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(str(folder)),
                        top_k=None, function_to_apply="sigmoid")
    text = "pizza drum football hotel today"
    found = {r["label"]: r["score"] for r in classify([text])[0]}
    enc = teacher[0].tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        expect = torch.sigmoid(teacher[0].model(**enc).logits[0]).tolist()
    assert set(found) == set(LABELS)
    for name, p in zip(LABELS, expect):
        assert found[name] == pytest.approx(p, abs=1e-4)


# -- the whole run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tokenizer, teacher):
    from tests.conftest import make_tiny_model
    root = tmp_path_factory.mktemp("ml-run")
    make_tiny_model().save_pretrained(root / "tiny")  # two classes: the head is replaced by 4 sigmoid outputs
    tokenizer.save_pretrained(root / "tiny")
    rows = marker_rows(208)  # the teacher's texts (same seed)
    write_jsonl(root / "train.jsonl", rows[:160])
    write_jsonl(root / "eval.jsonl", rows[160:])
    def flags(part):
        return "".join(f"{text}\t" + "\t".join(str(int(n in chosen)) for n in LABELS) + "\n" for text, chosen in part)
    write(root / "train-flags.tsv", flags(rows[:160]))
    write(root / "eval-flags.tsv", flags(rows[160:]))
    teacher[0].model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root


def _run(root: Path, out: Path, *extra, train="train.jsonl", evals="eval.jsonl") -> int:
    from compressor.cli import main
    return main(["run", str(root / "tiny"), "--train", str(root / train), "--eval", str(root / evals),
                 "--max-length", "16", "--runs", "2", "--batch-sizes", "1", "--seq-lens", "16", "-o", str(out),
                 "-q", *extra])


def _check_report(out: Path, root: Path) -> dict:
    from compressor.metrics import THRESHOLDS
    from compressor.onnx_utils import onnx_probabilities
    report = json.loads((out / "report.json").read_text())
    data, models = report["data"], report["models"]
    assert data["task_type"] == "multi-label" and data["metric_name"] == "micro_f1"
    assert data["label_names"] == LABELS and data["num_labels"] == 4 and data["majority_accuracy"] == 0.0
    for label in ("dense", "dense-int8", "compressed", "compressed-fp32"):
        m = models[label]
        assert m["metric_name"] == "micro_f1" and 0 <= m["accuracy_onnx"] <= 1, label
        assert m["threshold"] in THRESHOLDS and 0 <= m["macro_f1_onnx"] <= 1, label
        assert 0 <= m["precision_onnx"] <= 1 and 0 <= m["recall_onnx"] <= 1, label
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy_onnx"] + 1e-9 and m["accuracy_onnx"] <= high + 1e-9, label
    # the threshold is chosen on the dev split the run carved (same seed: same split), never on eval
    dev = load_task(train_file=str(root / "train.jsonl"), eval_file=str(root / "eval.jsonl")).carve_dev(None, 0).dev
    assert models["dense"]["threshold"] == choose_threshold(onnx_probabilities(out / "dense", dev, 16),
                                                            [e.label for e in dev])
    fp32 = models["compressed-fp32"]
    assert abs(fp32["accuracy_onnx"] - fp32["accuracy_torch"]) < 1e-6  # ONNX = torch at the same threshold
    paired = models["compressed"]["versus_paired"]["dense-int8"]
    assert paired["low"] <= paired["points"] <= paired["high"] and "compressed_only" not in paired
    export = next(s for s in report["steps"] if s["name"] == "export")["metrics"]
    assert export["max_abs_diff"] <= 1e-4
    schema = json.loads((Path(__file__).parents[1] / "compressor" / "schema" / "report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, schema)
    md = (out / "report.md").read_text()
    assert "Micro F1 (ONNX)" in md and "Macro F1 (ONNX)" in md and "Threshold (dev)" in md
    assert "predicting no label" in md and "bootstrap over rows): micro F1" in md
    assert "micro F1 points" in report["summary"]["versus_dense_int8"]["verdict"]
    return report


def test_run_fisher_with_teacher_and_recover(run_inputs, tmp_path):
    """Detected from the JSONL lists, a fine-tuned teacher: fisher's importance from the BCE loss,
    mask tuning, strip, recovery by per-label KD, export [B, 4], INT8, scored in micro F1."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", "fisher", "--teacher", str(run_inputs / "teacher"),
                "--method-option", "samples=64", "--recover", "--epochs", "1", "--allow-collapse")
    assert code == 0
    report = _check_report(out, run_inputs)
    assert [s["name"] for s in report["steps"]][:2] == ["fisher", "distill"]
    assert report["models"]["dense"]["accuracy_onnx"] > 0.6


def test_run_magnitude_finetunes_on_zero_one_columns(run_inputs, tmp_path):
    """No teacher: fine-tuned here (the 2-class head replaced by 4 sigmoid outputs) on 0/1 columns."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1", "--allow-collapse",
                "--columns", "text=0,labels=1:4", train="train-flags.tsv", evals="eval-flags.tsv")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric_name"] == "micro_f1" and report["data"]["label_names"] == ["1", "2", "3", "4"]
    assert [s["name"] for s in report["steps"]][:2] == ["finetune", "magnitude"]


@pytest.mark.parametrize("method", ["cap", "sparsebert", "rpp", "nip"])
def test_every_other_method_runs_on_label_sets(run_inputs, tmp_path, method):
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", method, "--sparsity", "0.5", "--epochs", "1", "--teacher",
                str(run_inputs / "teacher"), "--allow-collapse", "--max-train", "64")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric_name"] == "micro_f1" and report["steps"][0]["name"] == method
    assert all(0 <= m["accuracy_onnx"] <= 1 and "threshold" in m for m in report["models"].values())


def test_distill_with_augmented_texts(run_inputs, tmp_path):
    """Augmented copies carry no label set (NaN targets): only the per-label KD term sees them."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--pipeline", "distill{augment=1,epochs=1,min_steps=0,max_length=16},export",
                "--teacher", str(run_inputs / "teacher"), "--allow-collapse", "--max-train", "64")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][0]
    assert step["name"] == "distill" and step["metrics"]["augmented_examples"] > 0
    assert report["data"]["metric_name"] == "micro_f1"


@pytest.mark.parametrize("train, evals, args, match", [
    ('{"text": "a", "labels": ["x", "y"]}\n', '{"text": "b", "labels": ["q"]}\n', [], "label 'q'"),
    ('{"text": "a", "labels": ["x", "y"]}\n', None, ["--task-type", "classification"], "contradicts"),
])
def test_cli_bad_input_exit_2_one_line(tmp_path, capsys, tokenizer, train, evals, args, match):
    from compressor.cli import main
    from tests.conftest import make_tiny_model
    make_tiny_model().save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    t = write(tmp_path / "t.jsonl", train)
    e = write(tmp_path / "e.jsonl", evals) if evals else t
    capsys.readouterr()
    code = main(["run", str(tmp_path / "tiny"), "--train", t, "--eval", e, *args, "-o", str(tmp_path / "out"), "-q"])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_task_type_value_is_refused():
    with pytest.raises(CompressorError, match="multi-label"):
        load_task(train_file="x.jsonl", eval_file="y.jsonl", task_type="multilabel")
