"""Extractive question answering (SQuAD v1.1/v2.0) through the whole path: the SQuAD JSON and
JSONL readers (both answer forms), detection and ``--task-type``, windows over long contexts with
the answer's start/end labels (CLS outside the window), the span loss and KD over the sequence,
n-best answers across windows (v2: "" when the null score wins), SQuAD EM/F1 (hand-computed and
the official script's edge cases), dev selection, export with ``start_logits``/``end_logits``
verified against PyTorch, Optimum and the ``question-answering`` pipeline, ONNX scoring with
intervals, the report, and every method. The tiny task's answer is the word after the marker
word "key" (a city; a context without the marker has no answer), which a tiny model learns. No
real SQuAD data is used (none is available offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from compressor.data import Example, TaskData, load_task
from compressor.errors import CompressorError, ConfigError, DataError
from compressor.metrics import majority_accuracy, normalize_answer, squad_exact, squad_f1, squad_scores
from compressor.qa import Question, best_answers, is_qa_file, windows

FILLER = "the a river city old new blue green house road stone tree light dark cold warm small large".split()
CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "dublin", "prague", "oslo", "lisbon"]
QUESTION = "what follows key?"
MAX_LENGTH, STRIDE = 32, 8


def qa_records(n: int, seed: int, no_answer: float = 0.2) -> list[dict]:
    """``{id, question, context, answers}``: filler words with "key <city>" inside (the answer),
    a quarter of the contexts longer than one window, ``no_answer`` of them without the marker."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(30, 40) if rng.random() < 0.25 else rng.randint(4, 14))]
        answers = []
        if rng.random() >= no_answer:
            pos, city = rng.randint(0, len(words)), rng.choice(CITIES)
            words[pos:pos] = ["key", city]
            answers = [{"text": city, "answer_start": len(" ".join(words[:pos + 1])) + 1}]
        out.append({"id": f"q{seed}-{i}", "question": QUESTION, "context": " ".join(words), "answers": answers})
    return out


def write_squad(path: Path, records, titles: int = 0) -> str:
    """A SQuAD v2.0 file; with ``titles``, the records spread over that many articles."""
    titles = titles or len(records)
    data = [{"title": f"article {k}", "paragraphs": []} for k in range(titles)]
    for i, r in enumerate(records):
        qa = {"id": r["id"], "question": r["question"], "answers": r["answers"], "is_impossible": not r["answers"]}
        data[i % titles]["paragraphs"].append({"context": r["context"], "qas": [qa]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return str(path)


def write_jsonl(path: Path, records, hf_answers: bool = True) -> str:
    lines = []
    for r in records:
        answers = ({"text": [a["text"] for a in r["answers"]], "answer_start": [a["answer_start"] for a in r["answers"]]}
                   if hf_answers else r["answers"])
        lines.append(json.dumps({"id": r["id"], "question": r["question"], "context": r["context"], "answers": answers}))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def make_qa_task(n_train=240, n_eval=48, seed=0) -> TaskData:
    def examples(records):
        return [Example(r["question"], int(bool(r["answers"])), r["context"], r["id"],
                        qa=Question(tuple((a["text"], a["answer_start"]) for a in r["answers"]), STRIDE, True, r["id"]))
                for r in records]
    return TaskData("qa", examples(qa_records(n_train, seed + 1)), examples(qa_records(n_eval, seed + 2)),
                    ["start", "end"], task_type="question-answering")


# -- readers ------------------------------------------------------------------------------------
def test_squad_and_jsonl_readers(tmp_path):
    records = qa_records(20, 1)
    squad = write_squad(tmp_path / "train.json", records, titles=4)
    hf, listed = write_jsonl(tmp_path / "a.jsonl", records), write_jsonl(tmp_path / "b.jsonl", records, False)
    assert is_qa_file(squad) and is_qa_file(hf) and is_qa_file(listed)
    (tmp_path / "s.jsonl").write_text('{"text": "a", "label": 0}\n')
    assert not is_qa_file(tmp_path / "s.jsonl")
    data = load_task(train_file=squad, eval_file=hf)
    assert data.question_answering and data.label_names == ["start", "end"] and data.num_labels == 2
    assert data.info["squad_version"] == "2.0" and data.info["doc_stride"] == 128
    first = data.train[0]
    assert (first.text, first.text_pair, first.group) == (QUESTION, records[0]["context"], "article 0")
    assert [e.qa.answers for e in data.eval] == [e.qa.answers for e in load_task(train_file=squad, eval_file=listed).eval]
    assert [e.qa.answers for e in data.eval] == [tuple((a["text"], a["answer_start"]) for a in r["answers"])
                                                 for r in records]
    assert majority_accuracy(data.eval) == pytest.approx(sum(not r["answers"] for r in records) / 20)
    answered = [r for r in records if r["answers"]]
    v1 = load_task(train_file=write_jsonl(tmp_path / "v1.jsonl", answered), eval_file=hf, doc_stride=16)
    assert v1.info["squad_version"] == "2.0"  # the eval file has unanswerable questions
    v1 = load_task(train_file=str(tmp_path / "v1.jsonl"), eval_file=str(tmp_path / "v1.jsonl"), doc_stride=16)
    assert v1.info["squad_version"] == "1.1" and not v1.train[0].qa.allow_null and v1.train[0].qa.doc_stride == 16


def test_dev_split_keeps_contexts_together(tmp_path):
    squad, evals = write_squad(tmp_path / "t.json", qa_records(60, 1), titles=12), \
        write_jsonl(tmp_path / "e.jsonl", qa_records(8, 2))
    split = load_task(train_file=squad, eval_file=evals).carve_dev(10, seed=0)
    assert split.info["dev_split"] == "stratified by answerability, whole groups"
    assert not {e.group for e in split.dev} & {e.group for e in split.train}
    assert not {e.text_pair for e in split.dev} & {e.text_pair for e in split.train}
    plain = write_jsonl(tmp_path / "t.jsonl", qa_records(40, 3))  # no title: grouped by context
    split = load_task(train_file=plain, eval_file=evals).carve_dev(8, seed=0)
    assert not {e.text_pair for e in split.dev} & {e.text_pair for e in split.train}


@pytest.mark.parametrize("answers, match", [
    ([{"text": "paris", "answer_start": 3}], r"line 1 \(question 'x'\) has answer 'paris' at answer_start 3, but "
                                            r"the context there reads ' pari': answer_start must be"),
    ([{"text": "paris", "answer_start": 99}], r"at answer_start 99, but the context there reads None"),
    ({"text": ["paris"], "answer_start": [4, 5]}, r"has answers .*allowed"),
])
def test_bad_answers_are_one_line(tmp_path, answers, match):
    good = write_jsonl(tmp_path / "good.jsonl", qa_records(4, 1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q?", "context": "key paris", "answers": answers}) + "\n")
    with pytest.raises(DataError, match=match) as err:
        load_task(train_file=str(bad), eval_file=good)
    assert "\n" not in str(err.value) and err.value.exit_code == 2 and "bad.jsonl" in str(err.value)


def test_task_type_contradictions(tmp_path):
    qa = write_jsonl(tmp_path / "q.jsonl", qa_records(4, 1))
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sentence\tlabel\na b\t0\nc d\t1\n")
    with pytest.raises(DataError, match=r"--task-type classification contradicts data file .*q\.jsonl.*question-answering"):
        load_task(train_file=qa, eval_file=qa, task_type="classification")
    with pytest.raises(DataError, match=r"t\.tsv' is not a question-answering file"):
        load_task(train_file=str(tsv), eval_file=str(tsv), task_type="question-answering")
    with pytest.raises(DataError, match="embeddings needs sentence files"):
        load_task(train_file=qa, eval_file=qa, task_type="embeddings")
    with pytest.raises(ConfigError, match=r"doc_stride=64 is not allowed with max_length=64: allowed an integer in "
                                          r"\[0, 63\]"):
        __import__("compressor.config").config.RunConfig(doc_stride=64, max_length=64).validate()


def test_windows_that_cannot_hold_a_question_or_context(tokenizer):
    long = make_qa_task(n_train=40).train
    long = [e for e in long if len(e.text_pair.split()) > 30][:2]
    no_stride = [Example(e.text, e.label, e.text_pair, qa=Question(e.qa.answers, 0, True, e.qa.id)) for e in long]
    with pytest.raises(DataError, match=r"question '.*': its question and context take \d+ tokens, more than "
                                        r"--max-length 32, and --doc-stride 0 allows one window"):
        windows(tokenizer, no_stride, MAX_LENGTH)
    wordy = [Example(" ".join(["why"] * 30) + "?", 0, "a b c", qa=Question((), 8, True, "w"))]
    with pytest.raises(DataError, match=r"question 'w' takes 31 tokens: with --doc-stride 8 it leaves no room"):
        windows(tokenizer, wordy, MAX_LENGTH)


# -- windows and answers -----------------------------------------------------------------------
def test_windows_label_the_answer_or_cls(tokenizer):
    task = make_qa_task(n_train=60)
    examples = [e for e in task.train if e.qa.answers and len(e.text_pair.split()) > 30][:3]
    wins = windows(tokenizer, examples, MAX_LENGTH)
    assert len(wins) > len(examples) and all(len(w.inputs["input_ids"]) <= MAX_LENGTH for w in wins)
    for i, e in enumerate(examples):
        mine = [w for w in wins if w.example == i]
        labelled = [w for w in mine if w.start > 0]
        assert labelled, e.text_pair  # the answer is inside at least one window...
        for w in labelled:
            a, b = w.offsets[w.start][0], w.offsets[w.end][1]
            assert e.text_pair[a:b] == e.qa.answers[0][0]
        # ...and the others point at CLS
        assert all((w.start, w.end) == (0, 0) for w in mine if w not in labelled)
        # consecutive windows share STRIDE context tokens
        ctx = [[o for o in w.offsets if o is not None] for w in mine]
        assert all(prev[-STRIDE:] == nxt[:STRIDE] for prev, nxt in zip(ctx, ctx[1:]))
    none = [e for e in task.train if not e.qa.answers][:2]
    assert all((w.start, w.end) == (0, 0) for w in windows(tokenizer, none, MAX_LENGTH))


def test_best_answer_rules(tokenizer):
    context = "old key paris road"
    ex = [Example("q?", 1, context, qa=Question((("paris", 8),), 8, True, "a"))]
    (w,) = windows(tokenizer, ex, MAX_LENGTH)
    inside = [t for t, o in enumerate(w.offsets) if o is not None]
    n = len(w.offsets)
    start, end = [0.0] * n, [0.0] * n
    start[inside[2]], end[inside[2]] = 5.0, 5.0  # "paris"
    start[1], end[1] = 9.0, 9.0  # the question's token: outside the context, never an answer
    start[inside[3]], end[inside[0]] = 3.0, 7.0  # "road .. old": end before start, no span
    assert best_answers(ex, [w], [start], [end]) == ["paris"]
    start[0] = end[0] = 6.0  # the null score 12 beats the best span (paris: 10): v2 says ""
    assert best_answers(ex, [w], [start], [end]) == [""]
    v1 = [Example("q?", 1, context, qa=Question((("paris", 8),), 8, False, "a"))]
    assert best_answers(v1, [w], [start], [end]) == ["paris"]  # v1: never ""
    end[inside[3]] = 6.5  # "paris road" (5 + 6.5) beats "paris" (5 + 5) and "road" (3 + 6.5)
    assert best_answers(v1, [w], [start], [end]) == ["paris road"]
    assert best_answers(v1, [w], [start], [end], max_answer=1) == ["paris"]  # 2 tokens: too long


# -- the metric, hand-computed and the official script's edge cases ------------------------------
def test_squad_normalization_and_scores():
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert normalize_answer("Theater") == "theater"  # "the" only as a word
    assert squad_exact("the Denver Broncos", "Denver Broncos.") == 1
    assert squad_f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert squad_f1("Broncos Broncos", "Broncos") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts, not sets
    assert squad_f1("Carolina", "Denver") == 0.0
    em, f1 = squad_scores(["Broncos", "", "", "Santa Clara"],
                          [["Denver Broncos", "The Broncos"], [], ["Levi's Stadium"], ["Santa Clara, California"]])
    assert em == [1, 1, 0, 0]  # several gold answers: the best; v2 no answer: right only for ""
    assert f1 == pytest.approx([1.0, 1.0, 0.0, 2 * 1 * (2 / 3) / (1 + 2 / 3)])
    assert squad_scores(["x"], [[]]) == ([0], [0.0])  # an answer where there is none


def test_bootstrap_over_questions():
    import numpy as np
    from compressor.stats import mean_interval, paired_bootstrap
    a, b = np.array([1.0, 0.5, 0.0, 1.0] * 10), np.array([1.0, 0.0, 0.0, 1.0] * 10)
    low, high = mean_interval(a, resamples=2000)
    assert low <= a.mean() <= high
    d = paired_bootstrap(a, b, resamples=2000)
    assert d["diff"] == pytest.approx(0.125) and d["low"] <= 0.125 <= d["high"] and d["n"] == 40


# -- losses ------------------------------------------------------------------------------------
def test_span_loss_and_kd_over_the_sequence():
    import torch
    import torch.nn.functional as F
    from compressor.evaluation import SPAN_MASK
    from passes._distill import LogitKD, kd_kl, soft_cross_entropy, task_loss
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(2, 5, 2, generator=g), torch.randn(2, 6, 2, generator=g)  # cached teacher: longer
    z_s[1, 3:] = SPAN_MASK  # the second window is 3 tokens long
    labels = torch.tensor([[2, 3], [0, 0]])
    ce = 0.5 * (F.cross_entropy(z_s[..., 0], labels[:, 0]) + F.cross_entropy(z_s[..., 1], labels[:, 1]))
    assert float(task_loss(z_s, labels)) == pytest.approx(float(ce))
    t = z_t[:, :5].clone()
    t[1, 3:] = SPAN_MASK
    rows_s, rows_t = z_s.transpose(1, 2).flatten(0, 1), t.transpose(1, 2).flatten(0, 1)
    expect = F.kl_div(F.log_softmax(rows_s / 2, -1), F.log_softmax(rows_t / 2, -1), reduction="batchmean",
                      log_target=True) * 4
    assert float(kd_kl(z_s, z_t, 2.0, labels=labels)) == pytest.approx(float(expect))
    z_t2 = z_t.clone()
    z_t2[1, 3:] = 50.0  # the teacher's values at the student's padding do not count
    assert float(kd_kl(z_s, z_t2, 2.0, labels=labels)) == pytest.approx(float(expect))
    assert float(kd_kl(z_s, z_s.clone(), 2.0, labels=labels)) == pytest.approx(0.0, abs=1e-6)
    sce = (-F.softmax(rows_t, -1) * F.log_softmax(rows_s, -1)).mean()
    assert float(soft_cross_entropy(z_s, z_t, labels=labels)) == pytest.approx(float(sce))
    kd = LogitKD(z_t, temperature=2.0, hardness=0.5)
    out = type("Out", (), {"start_logits": z_s[..., 0], "end_logits": z_s[..., 1]})()
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    loss = kd(None, {"idx": torch.tensor([0, 1]), "labels": labels, "attention_mask": mask}, out)
    assert float(loss) == pytest.approx(0.5 * float(expect) + 0.5 * float(ce))


# -- a tiny model learns the task ----------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_task():
    return make_qa_task().carve_dev(48, seed=0)


@pytest.fixture(scope="module")
def teacher(tokenizer, qa_task):
    """A tiny QA model fine-tuned on the task (high LR: seconds), with its training result."""
    import tempfile

    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from passes._train import train
    from tests.conftest import make_tiny_model
    model = make_tiny_model(head="BertForQuestionAnswering")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp), data=qa_task, progress=False)
        res = train(model, tokenizer, qa_task, ctx, epochs=6, lr=3e-3, batch_size=16, max_length=MAX_LENGTH,
                    checkpoint_every=0)
    return TorchModel(model, tokenizer, {"source": "tiny-reader"}), res


def test_tiny_model_learns_with_f1_selection(teacher, qa_task):
    from compressor.evaluation import evaluate
    tm, res = teacher
    assert res.selection == "dev" and res.best_accuracy == max(e["dev_accuracy"] for e in res.epochs)
    last = res.epochs[-1]
    assert last["dev_metric"] == "squad_f1" and 0 <= last["dev_exact_match"] <= last["dev_accuracy"] + 1e-9
    assert last["dev_majority"] == pytest.approx(majority_accuracy(qa_task.dev)) and last["dev_rows"] == 48
    assert res.best_accuracy > 0.9, [e["dev_accuracy"] for e in res.epochs]
    f1 = evaluate(tm.model, tm.tokenizer, qa_task.eval, MAX_LENGTH)
    assert f1 == pytest.approx(res.accuracy, abs=1e-6) and f1 > 0.9, f1


def test_fisher_importance_from_the_span_loss(teacher, qa_task):
    from tests.conftest import fisher_mask_gradients
    gh, _ = fisher_mask_gradients(teacher[0].model, teacher[0].tokenizer, qa_task.train[:32], max_length=MAX_LENGTH)
    assert gh.shape[0] >= 2 and float(gh.abs().sum()) > 0 and bool(gh.isfinite().all())


def test_load_model_qa_head_and_resume(tmp_path, tokenizer):
    from compressor.models import load_model
    from compressor.resume import _load_torch
    from passes.families import family_of
    from tests.conftest import make_tiny_model
    make_tiny_model().save_pretrained(tmp_path / "seq")  # a sequence classifier: its head is replaced
    tokenizer.save_pretrained(tmp_path / "seq")
    tm = load_model(str(tmp_path / "seq"), num_labels=2, label_names=["start", "end"], question_answering=True)
    assert type(tm.model).__name__ == "BertForQuestionAnswering"
    assert "qa_outputs" in family_of(tm.model).linears(include=("classifier",))  # the task head
    tm.model.save_pretrained(tmp_path / "reader")
    tokenizer.save_pretrained(tmp_path / "reader")
    back = _load_torch(tmp_path / "reader", {})  # a resumed step's QA model loads as one, same weights
    assert type(back.model).__name__ == "BertForQuestionAnswering"
    assert all((a == b).all() for a, b in zip(back.model.state_dict().values(), tm.model.state_dict().values()))
    with pytest.raises(CompressorError, match="two outputs per token"):
        load_model(str(tmp_path / "seq"), num_labels=3, question_answering=True)


@pytest.mark.parametrize("spec", ["magnitude{sparsity=0.5,epochs=1}", "nip{sparsity=0.5,epochs=1}",
                                  "rpp{sparsity=0.5,epochs=1}", "cap{sparsity=0.5,epochs=1}",
                                  "sparsebert{sparsity=0.5,epochs=1}", "distill{epochs=1,min_steps=0}"])
def test_every_method_trains_on_spans(teacher, qa_task, tmp_path, spec):
    """Each method as a pipeline step on the fine-tuned model, its teacher the same model: span CE
    and KD over the sequence train it, and it is scored in SQuAD F1."""
    import copy

    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from compressor.evaluation import evaluate
    from compressor.pipeline import Pipeline
    tm = teacher[0]
    start = TorchModel(copy.deepcopy(tm.model), tm.tokenizer, {"source": "tiny-reader"})
    small = TaskData("qa", qa_task.train[:32], qa_task.eval[:8], qa_task.label_names, dict(qa_task.info),
                     qa_task.dev[:8], qa_task.task_type)
    ctx = RunContext(tmp_path, data=small, teacher=tm, pretrained=start, max_length=MAX_LENGTH, progress=False)
    name = spec.split("{")[0]
    spec = spec.replace("}", f",max_length={MAX_LENGTH},batch_size=16}}")
    out = Pipeline(spec).run(start, ctx)
    model = out.artifact.model
    assert type(model).__name__ == "BertForQuestionAnswering" and out.records[0].name == name
    assert 0.0 <= evaluate(model, tm.tokenizer, small.eval, MAX_LENGTH) <= 1.0


def test_real_profile_batches_are_question_context_windows(tokenizer, qa_task):
    from compressor.profiling import real_batches
    examples = [e for e in qa_task.eval if len(e.text_pair.split()) > 30][:4]
    (batch,) = real_batches(tokenizer, examples, [4], MAX_LENGTH, count=1)[4]
    assert batch["input_ids"].shape == (4, MAX_LENGTH)  # long contexts: whole windows of max_length
    q = len(tokenizer(QUESTION)["input_ids"])
    assert (batch["token_type_ids"][:, :q] == 0).all() and (batch["token_type_ids"][:, q:] == 1).all()
    assert tokenizer.decode(batch["input_ids"][0][:q]).startswith("[CLS] what follows key?")


# -- export, ONNX, Optimum ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(teacher, qa_task, tmp_path_factory):
    from compressor.context import RunContext
    from passes.export_onnx import Export
    root = tmp_path_factory.mktemp("qa-export")
    ctx = RunContext(root, data=qa_task, max_length=MAX_LENGTH, progress=False)
    ctx.step_dir = root / "onnx"
    return Export()(teacher[0], ctx)


def test_export_matches_torch_start_and_end_logits(exported, teacher, qa_task):
    import numpy as np
    import onnx
    import torch

    from compressor.onnx_utils import make_session
    from compressor.onnx_utils import onnx_qa_scores
    from compressor.qa import window_feeds
    folder = Path(exported.artifact.path).parent
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert shapes == {"start_logits": ["batch_size", "sequence_length"], "end_logits": ["batch_size", "sequence_length"]}
    assert len(exported.metrics["max_abs_diff_by_shape"]) == 3 and exported.metrics["max_abs_diff"] <= 1e-4
    tm = teacher[0]
    wins = windows(tm.tokenizer, qa_task.eval[:12], MAX_LENGTH)
    session = make_session(folder)
    feeds = window_feeds(wins, [i.name for i in session.get_inputs()], tm.tokenizer.pad_token_id)
    start, end = session.run(["start_logits", "end_logits"], feeds)
    with torch.no_grad():
        out = tm.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    np.testing.assert_allclose(start, out.start_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(end, out.end_logits.numpy(), atol=1e-4)
    from compressor.evaluation import evaluate
    _, f1 = onnx_qa_scores(folder, qa_task.eval, MAX_LENGTH)
    assert float(f1.mean()) == pytest.approx(evaluate(tm.model, tm.tokenizer, qa_task.eval, MAX_LENGTH), abs=1e-6)


def test_exported_folder_runs_in_optimum_and_the_pipeline(exported, qa_task):
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoTokenizer, pipeline
    folder = str(Path(exported.artifact.path).parent)
    model = ORTModelForQuestionAnswering.from_pretrained(folder)
    reader = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(folder))
    found = reader(question=QUESTION, context="old river key madrid stone tree", max_seq_len=MAX_LENGTH,
                   doc_stride=STRIDE)
    assert found["answer"] == "madrid", found


# -- the whole run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tokenizer, teacher):
    from tests.conftest import make_tiny_model
    root = tmp_path_factory.mktemp("qa-run")
    make_tiny_model().save_pretrained(root / "tiny")  # a sequence classifier: its head is replaced
    tokenizer.save_pretrained(root / "tiny")
    write_squad(root / "train.json", qa_records(240, 1), titles=60)  # the teacher's data (same seed)
    write_jsonl(root / "eval.jsonl", qa_records(48, 2))
    teacher[0].model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root


def _run(root: Path, out: Path, *extra) -> int:
    from compressor.cli import main
    return main(["run", str(root / "tiny"), "--train", str(root / "train.json"), "--eval", str(root / "eval.jsonl"),
                 "--max-length", str(MAX_LENGTH), "--doc-stride", str(STRIDE), "--runs", "2", "--batch-sizes", "1",
                 "--seq-lens", "16", "-o", str(out), "-q", *extra])


def test_run_fisher_with_teacher_and_recover(run_inputs, tmp_path):
    """Detected from the files, a fine-tuned teacher: fisher's importance from the span loss,
    strip, recovery by KD over the sequence, export of start/end logits, INT8, scored in SQuAD F1
    with intervals, profiled on real question+context windows, the report."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", "fisher", "--teacher", str(run_inputs / "teacher"),
                "--method-option", "samples=32", "--recover", "--epochs", "1", "--max-train", "96",
                "--allow-collapse")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    data, models = report["data"], report["models"]
    assert (data["task_type"], data["metric_name"], data["squad_version"], data["doc_stride"]) == \
        ("question-answering", "squad_f1", "2.0", STRIDE)
    assert data["majority_accuracy"] == pytest.approx(majority_accuracy(load_task(
        train_file=str(run_inputs / "train.json"), eval_file=str(run_inputs / "eval.jsonl")).eval))
    assert [s["name"] for s in report["steps"]][:2] == ["fisher", "distill"]
    assert models["dense"]["accuracy_onnx"] > 0.9
    for label in ("dense", "dense-int8", "compressed", "compressed-fp32"):
        m = models[label]
        assert m["metric_name"] == "squad_f1" and m["accuracy_onnx"] <= 1, label
        assert 0 <= m["exact_match_onnx"] <= m["accuracy_onnx"] + 1e-9, label
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy_onnx"] + 1e-9 and m["accuracy_onnx"] <= high + 1e-9, label
    fp32 = models["compressed-fp32"]
    assert abs(fp32["accuracy_onnx"] - fp32["accuracy_torch"]) < 1e-6  # ONNX = torch on the same questions
    paired = models["compressed"]["versus_paired"]["dense-int8"]
    assert paired["low"] <= paired["points"] <= paired["high"] and "compressed_only" not in paired
    assert any(p["shape_kind"] == "real" for p in report["profiles"])  # timed on real question+context windows
    assert report["profile_grid"]["eval_token_lengths"]["max"] <= MAX_LENGTH
    schema = json.loads((Path(__file__).parents[1] / "compressor" / "schema" / "report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, schema)
    md = (out / "report.md").read_text()
    assert "SQuAD F1 (ONNX)" in md and "Exact match (ONNX)" in md and 'the empty answer (always answering "")' in md
    assert "bootstrap over questions" in md and "SQuAD F1 points" in report["summary"]["versus_dense_int8"]["verdict"]


def test_cli_bad_input_exit_2_one_line_nothing_written(run_inputs, tmp_path, capsys):
    from compressor.cli import main
    base = ["run", str(run_inputs / "tiny"), "--train", str(run_inputs / "train.json"), "--eval",
            str(run_inputs / "eval.jsonl"), "-q", "--max-length", str(MAX_LENGTH)]
    for extra, expect in ((["--task-type", "regression"], "contradicts"),
                          (["--doc-stride", "32"], "doc_stride=32 is not allowed"),
                          (["--doc-stride", "0"], "--doc-stride 0 allows one window")):
        out = tmp_path / extra[-1]
        capsys.readouterr()
        code = main(base + extra + ["-o", str(out)])
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and expect in err[0], (extra, err)
        assert not (out / "report.json").exists() and not (out / "recipe.yaml").exists()


class _Split(list):
    """A list of records with ``features``, as an HF ``datasets`` split offers them."""

    def __init__(self, rows, features=None):
        super().__init__(rows)
        self.features = features or {}


def test_hub_task_names_read_through_the_local_readers(monkeypatch):
    """``--task wnut_17`` / ``squad_v2`` (HF datasets; hub unreachable here: a stand-in module)
    become the same TaskData as the local files: tag names from the ClassLabel feature, answers
    checked against their contexts, the hub id recorded."""
    import sys
    import types

    from compressor.data import load_task
    names = ["O", "B-person", "I-person"]
    feature = types.SimpleNamespace(feature=types.SimpleNamespace(names=names))
    ctx = "Anna lives in Rome ."
    hub = {"leondz/wnut_17": {"train": _Split([{"tokens": ["Anna", "Lee", "sings"], "ner_tags": [1, 2, 0]}],
                                              {"ner_tags": feature}),
                              "test": _Split([{"tokens": ["Bo", "runs"], "ner_tags": [1, 0]}])},
           "rajpurkar/squad_v2": {s: _Split([
               {"id": "q1", "title": "T1", "question": "Where?", "context": ctx,
                "answers": {"text": ["Rome"], "answer_start": [14]}},
               {"id": "q2", "title": "T2", "question": "Who?", "context": ctx, "answers": {"text": [], "answer_start": []}}])
               for s in ("train", "validation")}}
    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda repo, *a: calls.append(repo) or hub[repo])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    tags = load_task("wnut_17")
    assert tags.task_type == "token-classification" and tags.name == "wnut_17"
    assert tags.label_names == names and [tags.label_names[t] for t in tags.train[0].label] == ["B-person", "I-person", "O"]
    assert tags.info["source"] == "leondz/wnut_17" and tags.info["eval_split"] == "test"
    qa = load_task("squad_v2", doc_stride=16)
    assert qa.question_answering and qa.info["squad_version"] == "2.0" and qa.info["doc_stride"] == 16
    assert [e.qa.answers for e in qa.eval] == [(("Rome", 14),), ()]
    assert calls == ["leondz/wnut_17", "rajpurkar/squad_v2"]
    hub["rajpurkar/squad_v2"]["train"][0]["answers"]["answer_start"] = [3]  # does not point at "Rome"
    with pytest.raises(DataError, match="answer"):
        load_task("squad_v2")
    with pytest.raises(DataError, match="contradicts task 'wnut_17'"):
        load_task("wnut_17", task_type="regression")
