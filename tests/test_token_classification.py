"""Token classification (NER taggers) through the whole path: CoNLL-style and JSONL tokens/tags
readers (IOB1/IOB2/BIOES converted to IOB2), detection and ``--task-type``, sub-word alignment
(first sub-word of each word tagged, the rest -100), per-token CE and KD, entity-level F1 under
strict IOB2 (hand-computed cases), dev selection, export with a ``[B, S, C]`` output, ONNX scoring,
the report, and every method. The tiny task tags names from a fixed list PER and cities LOC in
template sentences, which a tiny model learns. No real NER data is used (none is available offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from compressor.data import Example, TaskData, is_tagging_file, load_task, tag_scheme, to_iob2
from compressor.errors import CompressorError, DataError
from compressor.metrics import entity_counts, entity_scores, entity_spans, majority_accuracy

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
FIRST = ["john", "mary", "peter", "anna", "david", "laura", "james", "sarah"]
LAST = ["smith", "brown", "jones", "miller", "davis", "wilson"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "dublin", "prague"]
TEMPLATES = ["{p} lives in {c}", "yesterday {p} flew to {c}", "{p} and {p} met in {c} last week",
             "the train to {c} was late", "we saw {p} at the station", "{c} is a big city",
             "after lunch {p} called from {c}", "nobody came to the party"]


def _sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for part in rng.choice(TEMPLATES).split():
        if part == "{p}":
            name = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
            words += name
            tags += ["B-PER"] + ["I-PER"] * (len(name) - 1)
        elif part == "{c}":
            words.append(rng.choice(CITIES))
            tags.append("B-LOC")
        else:
            words.append(part)
            tags.append("O")
    return words, tags


def make_ner_task(n_train=240, n_eval=48, seed=0) -> TaskData:
    rng = random.Random(seed)

    def rows(n):
        out = []
        for _ in range(n):
            words, tags = _sentence(rng)
            out.append(Example(" ".join(words), tuple(TAGS.index(t) for t in tags), words=tuple(words)))
        return out
    return TaskData("ner", rows(n_train), rows(n_eval), list(TAGS), task_type="token-classification")


def write_conll(path: Path, examples, docs: int = 0, extra_column: bool = True) -> Path:
    """CoNLL lines ``word [POS] tag``; with ``docs``, a ``-DOCSTART-`` line before every
    ``len / docs`` sentences."""
    lines, per_doc = [], max(1, len(examples) // docs) if docs else 0
    for i, e in enumerate(examples):
        if docs and i % per_doc == 0:
            lines += ["-DOCSTART- -X- O" if extra_column else "-DOCSTART- O", ""]
        lines += [f"{w} NN {TAGS[t]}" if extra_column else f"{w} {TAGS[t]}" for w, t in zip(e.words, e.label)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return str(path)


# -- readers ------------------------------------------------------------------------------------
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def test_conll_reader_documents_and_tags(tmp_path):
    train = write(tmp_path / "train.conll", CONLL)
    data = load_task(train_file=train, eval_file=train)
    assert data.task_type == "token-classification" and data.tagging
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    first, second, third = data.train
    assert first.words == ("EU", "rejects", "German", "call") and first.text == "EU rejects German call"
    assert [data.label_names[t] for t in second.label] == ["B-PER", "I-PER"]
    assert (first.group, second.group, third.group) == ("doc1", "doc1", "doc2")  # -DOCSTART- marks documents
    assert data.info["tag_scheme"] == "IOB2" and majority_accuracy(data.eval) == 0.0


def test_any_extension_reads_as_conll_when_the_task_type_says_so(tmp_path):
    # WNUT-17's test file is emerging.test.annotated: tab-separated token and tag lines
    train = write(tmp_path / "emerging.test.annotated", "Anna\tB-person\nlives\tO\n\nRome\tB-location\n")
    data = load_task(train_file=train, eval_file=train, task_type="token-classification")
    assert data.label_names == ["O", "B-location", "I-location", "B-person", "I-person"]
    assert [e.words for e in data.train] == [("Anna", "lives"), ("Rome",)]
    bad = write(tmp_path / "x.data", "Anna\tB-person\nlives\tO\tO\n")
    with pytest.raises(DataError, match=r"x\.data' is not a token-classification file.*line 2 .* has 3 columns"):
        load_task(train_file=bad, eval_file=bad, task_type="token-classification")


def test_jsonl_reader_and_detection(tmp_path):
    rows = [{"tokens": ["Anna", "visits", "Rome"], "tags": ["B-PER", "O", "B-LOC"]},
            {"tokens": ["hello"], "tags": ["O"]}]
    path = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert is_tagging_file(path) and is_tagging_file(tmp_path / "x.iob")
    assert not is_tagging_file(write(tmp_path / "s.jsonl", '{"text": "a", "label": 0}\n'))
    data = load_task(train_file=path, eval_file=path)
    assert data.tagging and data.train[0].words == ("Anna", "visits", "Rome") and data.train[0].group is None
    assert [data.label_names[t] for t in data.train[0].label] == ["B-PER", "O", "B-LOC"]
    bad = write(tmp_path / "b.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"b\.jsonl.*line 1 has 2 tokens and 1 tags"):
        load_task(train_file=bad, eval_file=path)


def test_iob1_and_bioes_become_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]  # IOB1: B- only between same-type entities
    assert to_iob2(["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]) == \
        ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC"]
    assert to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]
    assert tag_scheme([["B-PER", "I-PER"], ["O", "B-LOC"]]) == "IOB2"
    assert tag_scheme([["O", "I-PER"]]) == "IOB1"
    assert tag_scheme([["S-PER"], ["O"]]) == "BIOES"


def test_iob1_and_bioes_files(tmp_path):
    iob1 = write(tmp_path / "a.conll", "Peter I-PER\nBlackburn I-PER\nin O\nRome I-LOC\n")
    bioes = write(tmp_path / "b.iob", "Peter B-PER\nBlackburn E-PER\nin O\nRome S-LOC\n")
    data = load_task(train_file=iob1, eval_file=bioes)
    names = data.label_names
    assert [names[t] for t in data.train[0].label] == [names[t] for t in data.eval[0].label] == \
        ["B-PER", "I-PER", "O", "B-LOC"]
    assert (data.info["tag_scheme"], data.info["eval_tag_scheme"]) == ("IOB1", "BIOES")


@pytest.mark.parametrize("text, match", [
    ("a x B-PER\nb O\n", r"bad\.conll': line 2 'b O' has 2 columns: allowed 3"),
    ("a x B-PER\nb x y O\n", r"line 2 'b x y O' has 4 columns: allowed 3"),
    ("alone\n", r"line 1 'alone' has 1 column"),
    ("a PER\n", r"line 1 has tag 'PER': allowed O or B-, I-, E-, S-"),
    ("a O\nb O\n", r"no entity tags"),
])
def test_bad_conll_lines_are_one_line(tmp_path, text, match):
    good = write(tmp_path / "good.conll", "a B-PER\n")
    bad = write(tmp_path / "bad.conll", text)
    with pytest.raises(DataError, match=match) as err:
        load_task(train_file=bad, eval_file=good)
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_eval_tag_outside_train_tag_set(tmp_path):
    train = write(tmp_path / "t.conll", "Anna B-PER\nin O\nRome B-LOC\n")
    evals = write(tmp_path / "e.conll", "Anna B-PER\n\nACME B-ORG\nInc I-ORG\n")
    with pytest.raises(DataError, match=r"e\.conll': line 3 has tag 'B-ORG'.*not in the train file's tag set: "
                                        r"allowed O, B-LOC, I-LOC, B-PER, I-PER"):
        load_task(train_file=train, eval_file=evals)
    # an I- tag of a type seen in train is in the tag set even if train never used it
    multi = write(tmp_path / "m.conll", "Anna B-PER\nLee I-PER\nin O\nNew B-LOC\nYork I-LOC\n")
    assert load_task(train_file=train, eval_file=multi).eval[0].label == (3, 4, 0, 1, 2)


def test_task_type_contradictions(tmp_path):
    conll = write(tmp_path / "t.conll", "Anna B-PER\n")
    tsv = write(tmp_path / "t.tsv", "sentence\tlabel\na b\t0\nc d\t1\n")
    with pytest.raises(DataError, match="--task-type regression contradicts data file .*token-classification"):
        load_task(train_file=conll, eval_file=conll, task_type="regression")
    with pytest.raises(DataError, match=r"t\.tsv' is not a token-classification file"):
        load_task(train_file=tsv, eval_file=tsv, task_type="token-classification")
    with pytest.raises(CompressorError, match="--columns"):
        load_task(train_file=conll, eval_file=conll, columns="text=0,label=1")
    with pytest.raises(DataError, match="embeddings needs sentence files"):
        load_task(train_file=conll, eval_file=conll, task_type="embeddings")


def test_dev_split_keeps_documents_together(tmp_path):
    task = make_ner_task(n_train=120, n_eval=10)
    data = load_task(train_file=str(write_conll(tmp_path / "t.conll", task.train, docs=12)),
                     eval_file=str(write_conll(tmp_path / "e.conll", task.eval)))
    split = data.carve_dev(24, seed=0)
    assert split.tagging and split.info["dev_split"] == "stratified by entity presence, whole groups"
    assert not {e.group for e in split.dev} & {e.group for e in split.train}
    assert len(split.dev) % 10 == 0  # whole documents of 10 sentences


# -- sub-word alignment ------------------------------------------------------------------------
def test_first_subword_gets_the_tag(tokenizer):
    from compressor.evaluation import EncodedDataset, PadCollator, word_starts
    words = ("Johannesburg", "is", "unbelievably", "far")
    rows = [Example(" ".join(words), (1, 0, 0, 0), words=words), Example("Paris", (1,), words=("Paris",))]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(rows[0].text)["input_ids"])
    assert tokens[3:8] == ["un", "##bel", "##ie", "##va", "##bly"]
    assert word_starts(tokenizer, rows, 64) == [[1, 2, 3, 8], [1]]
    assert word_starts(tokenizer, rows, 4) == [[1, 2, -1, -1], [1]]  # cut by truncation
    ds = EncodedDataset(tokenizer, rows, 64)
    assert ds.labels[0] == [-100, 1, 0, 0, -100, -100, -100, -100, 0, -100] and ds.tags == [[1, 0, 0, 0], [1]]
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["labels"][1].tolist() == [-100, 1] + [-100] * 8  # padded with -100


# -- the metric, hand-computed -------------------------------------------------------------------
def test_entity_spans_strict_iob2():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert entity_spans(["I-PER", "I-PER", "O"]) == set()  # I- without B-: no entity (strict)
    assert entity_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 1)}  # a type change ends it
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    assert entity_spans(["O", "O"]) == set() and entity_spans([]) == set()


def test_entity_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "B-PER"]]
    # sentence 1: PER span cut short (partial = miss), LOC right; sentence 2: LOC tagged PER (wrong
    # type = miss and a false positive), PER right, and one extra LOC predicted
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "B-LOC", "B-PER"]]
    assert entity_counts(gold[0], pred[0]) == (1, 2, 2)
    assert entity_counts(gold[1], pred[1]) == (1, 3, 2)
    scores = entity_scores(gold, pred)  # 2 right of 5 predicted and 4 gold
    assert scores["precision"] == pytest.approx(2 / 5) and scores["recall"] == pytest.approx(2 / 4)
    assert scores["entity_f1"] == pytest.approx(2 * 2 / (5 + 4))
    assert entity_scores(gold, [["O"] * 4, ["O"] * 3])["entity_f1"] == 0.0  # all-O: the trivial baseline
    assert entity_scores([["O"]], [["O"]])["entity_f1"] == 0.0


def test_entity_f1_matches_seqeval_when_installed():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2
    rng = random.Random(1)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [[rng.choice(tags) for _ in range(8)] for _ in range(30)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in g] for g in gold]
    ours = entity_scores(gold, pred)["entity_f1"]
    assert ours == pytest.approx(seqeval.f1_score(gold, pred, mode="strict", scheme=IOB2))


def test_f1_bootstrap_intervals():
    import numpy as np
    from compressor.stats import f1_interval, paired_bootstrap_f1
    a = np.array([[1, 1, 1]] * 30 + [[0, 1, 1]] * 10)
    b = np.array([[1, 1, 1]] * 20 + [[0, 1, 1]] * 20)
    low, high = f1_interval(a, resamples=2000)
    assert low <= 0.75 <= high <= 1
    d = paired_bootstrap_f1(a, b, resamples=2000)
    assert d["diff"] == pytest.approx(0.25) and d["low"] <= 0.25 <= d["high"] and d["n"] == 40
    same = paired_bootstrap_f1(a, a, resamples=200)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


# -- losses ------------------------------------------------------------------------------------
def test_kd_and_task_losses_per_token():
    import torch
    import torch.nn.functional as F
    from passes._distill import LogitKD, kd_kl, soft_cross_entropy, task_loss
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(2, 4, 3, generator=g), torch.randn(2, 5, 3, generator=g)  # cached teacher: longer
    labels = torch.tensor([[-100, 1, 0, -100], [-100, 2, -100, -100]])
    keep = labels >= 0
    rows_s, rows_t = z_s[keep], z_t[:, :4][keep]
    expect = F.kl_div(F.log_softmax(rows_s / 2, -1), F.log_softmax(rows_t / 2, -1), reduction="batchmean",
                      log_target=True) * 4
    assert float(kd_kl(z_s, z_t, 2.0, labels=labels)) == pytest.approx(float(expect))
    sce = (-F.softmax(rows_t, -1) * F.log_softmax(rows_s, -1)).mean()
    assert float(soft_cross_entropy(z_s, z_t, labels=labels)) == pytest.approx(float(sce))
    assert float(task_loss(z_s, labels)) == pytest.approx(float(F.cross_entropy(rows_s, labels[keep])))
    kd = LogitKD(z_t, temperature=2.0, hardness=0.5)
    out = type("Out", (), {"logits": z_s})()
    loss = kd(None, {"idx": torch.tensor([0, 1]), "labels": labels}, out)
    assert float(loss) == pytest.approx(0.5 * float(expect) + 0.5 * float(F.cross_entropy(rows_s, labels[keep])))


def test_cap_objective_on_tags():
    import torch
    from passes.cap.contrastive import CapObjective
    obj = CapObjective(torch.zeros(2), w_ce=1.0, w_kd=1.0)
    z = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[-100, 3, 0], [-100, 1, -100]])
    loss = obj(z, labels, teacher_logits=z.detach().clone())
    assert obj.last["kd"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()


# -- a tiny tagger learns the task ---------------------------------------------------------------
def make_tiny_tagger(seed=0):
    import torch
    from transformers import BertConfig, BertForTokenClassification
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=len(TAGS),
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})
    cfg._attn_implementation = "eager"
    return BertForTokenClassification(cfg).eval()


@pytest.fixture(scope="module")
def ner_task():
    return make_ner_task().carve_dev(48, seed=0)


@pytest.fixture(scope="module")
def teacher(tokenizer, ner_task):
    """A tiny tagger fine-tuned on the task (high LR: seconds), with its training result."""
    import tempfile

    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from passes._train import train
    model = make_tiny_tagger()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp), data=ner_task, progress=False)
        res = train(model, tokenizer, ner_task, ctx, epochs=10, lr=3e-3, batch_size=16, max_length=24,
                    checkpoint_every=0)
    return TorchModel(model, tokenizer, {"source": "tiny-tagger"}), res


def test_tiny_tagger_learns_with_f1_selection(teacher, ner_task):
    from compressor.evaluation import evaluate
    tm, res = teacher
    assert res.selection == "dev" and res.best_accuracy == max(e["dev_accuracy"] for e in res.epochs)
    last = res.epochs[-1]
    assert last["dev_metric"] == "entity_f1" and last["dev_majority"] == 0.0 and last["dev_top_share"] is None
    assert 0 <= last["dev_precision"] <= 1 and 0 <= last["dev_recall"] <= 1
    assert res.best_accuracy > 0.8, [e["dev_accuracy"] for e in res.epochs]
    f1 = evaluate(tm.model, tm.tokenizer, ner_task.eval, 24)
    assert f1 == pytest.approx(res.accuracy, abs=1e-6) and f1 > 0.8, f1


def test_fisher_importance_from_the_token_loss(teacher, ner_task):
    from tests.conftest import fisher_mask_gradients
    gh, _ = fisher_mask_gradients(teacher[0].model, teacher[0].tokenizer, ner_task.train[:32])
    assert gh.shape[0] == 2 and float(gh.abs().sum()) > 0 and bool(gh.isfinite().all())


def test_load_model_token_head_and_resume(tmp_path, tokenizer):
    from compressor.models import load_model
    from compressor.resume import _load_torch
    from tests.conftest import make_tiny_model
    make_tiny_model().save_pretrained(tmp_path / "seq")  # a sequence classifier: its head is replaced
    tokenizer.save_pretrained(tmp_path / "seq")
    tm = load_model(str(tmp_path / "seq"), num_labels=5, label_names=TAGS, token_classification=True)
    assert type(tm.model).__name__ == "BertForTokenClassification" and tm.model.config.id2label[3] == "B-PER"
    tm.model.save_pretrained(tmp_path / "tagger")
    tokenizer.save_pretrained(tmp_path / "tagger")
    back = _load_torch(tmp_path / "tagger", {})  # a resumed step's tagger loads as a tagger, same weights
    assert type(back.model).__name__ == "BertForTokenClassification"
    assert all((a == b).all() for a, b in zip(back.model.state_dict().values(), tm.model.state_dict().values()))
    with pytest.raises(CompressorError, match="token classifier"):
        load_model(str(tmp_path / "seq"), num_labels=1, problem_type="regression", token_classification=True)


def test_cli_contradiction_exit_2_one_line(tmp_path, capsys):
    from compressor.cli import main
    from tests.conftest import write_tiny_run_inputs
    model_dir, _, _ = write_tiny_run_inputs(tmp_path / "in", n_train=16, n_eval=8)
    conll = write(tmp_path / "t.conll", "Anna B-PER\nin O\nRome B-LOC\n")
    capsys.readouterr()
    code = main(["run", str(model_dir), "--train", conll, "--eval", conll, "--task-type", "classification",
                 "-o", str(tmp_path / "out"), "-q"])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "contradicts" in err[0] and "t.conll" in err[0], err
    assert not (tmp_path / "out" / "report.json").exists()


# -- the whole run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tokenizer, teacher, ner_task):
    from tests.conftest import make_tiny_model
    root = tmp_path_factory.mktemp("ner-run")
    make_tiny_model().save_pretrained(root / "tiny")  # a sequence classifier: its head is replaced
    tokenizer.save_pretrained(root / "tiny")
    task = make_ner_task()  # the teacher's data (same seed)
    write_conll(root / "train.conll", task.train, docs=24)
    seen = {e.text for e in task.train}  # a document with a sentence also in eval never goes to dev
    write_conll(root / "eval.conll", [e for e in task.eval if e.text not in seen])
    teacher[0].model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root


def _run(root: Path, out: Path, *extra) -> int:
    from compressor.cli import main
    return main(["run", str(root / "tiny"), "--train", str(root / "train.conll"), "--eval",
                 str(root / "eval.conll"), "--max-length", "24", "--runs", "2", "--batch-sizes", "1",
                 "--seq-lens", "16", "-o", str(out), "-q", *extra])


def _check_report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    data, models = report["data"], report["models"]
    assert data["task_type"] == "token-classification" and data["metric_name"] == "entity_f1"
    assert data["label_names"] == TAGS and data["num_labels"] == 5 and data["majority_accuracy"] == 0.0
    assert data["tag_scheme"] == "IOB2"
    for label in ("dense", "dense-int8", "compressed", "compressed-fp32"):
        m = models[label]
        assert m["metric_name"] == "entity_f1" and 0 <= m["accuracy_onnx"] <= 1, label
        assert 0 <= m["precision_onnx"] <= 1 and 0 <= m["recall_onnx"] <= 1, label
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy_onnx"] + 1e-9 and m["accuracy_onnx"] <= high + 1e-9, label
    fp32 = models["compressed-fp32"]
    assert abs(fp32["accuracy_onnx"] - fp32["accuracy_torch"]) < 1e-6  # ONNX = torch on the same sentences
    paired = models["compressed"]["versus_paired"]["dense-int8"]
    assert paired["low"] <= paired["points"] <= paired["high"] and "compressed_only" not in paired
    export = next(s for s in report["steps"] if s["name"] == "export")["metrics"]
    assert export["max_abs_diff"] <= 1e-4 and len(export["max_abs_diff_by_shape"]) == 3  # verified [B, S, C]
    schema = json.loads((Path(__file__).parents[1] / "compressor" / "schema" / "report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, schema)
    md = (out / "report.md").read_text()
    assert "Entity F1 (ONNX)" in md and "Recall (ONNX)" in md and "tagging every word O" in md
    assert "bootstrap over sentences" in md and "entity F1 points" in report["summary"]["versus_dense_int8"]["verdict"]
    return report


def _onnx_logits_shape(folder: Path) -> list:
    import onnx
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    out = next(o for o in graph.output if o.name == "logits")
    return [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]


def test_run_fisher_with_teacher_and_recover(run_inputs, tmp_path):
    """Detected from the .conll files, a fine-tuned teacher: fisher's importance from the token
    loss, mask tuning, strip, recovery by per-token KD, export [B, S, C], INT8, scored in F1."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", "fisher", "--teacher", str(run_inputs / "teacher"),
                "--method-option", "samples=64", "--recover", "--epochs", "2", "--allow-collapse")
    assert code == 0
    report = _check_report(out)
    assert [s["name"] for s in report["steps"]][:2] == ["fisher", "distill"]
    assert report["models"]["dense"]["accuracy_onnx"] > 0.8
    assert _onnx_logits_shape(out / "dense") == ["batch_size", "sequence_length", 5]
    import shutil
    shutil.copytree(out / "dense", run_inputs / "dense-onnx")  # for the Optimum check


def test_run_magnitude_finetunes_the_tagger(run_inputs, tmp_path):
    """No teacher: the tagger is fine-tuned here (a sequence classifier's head replaced by a token
    head), magnitude with per-token KD, the whole report."""
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1", "--allow-collapse")
    assert code == 0
    report = _check_report(out)
    assert [s["name"] for s in report["steps"]][:2] == ["finetune", "magnitude"]
    assert abs(report["models"]["compressed"]["sparsity"] - 0.5) < 0.01


@pytest.mark.parametrize("method", ["cap", "sparsebert", "rpp", "nip"])
def test_every_other_method_runs_on_tags(run_inputs, tmp_path, method):
    out = tmp_path / "run"
    code = _run(run_inputs, out, "--method", method, "--sparsity", "0.5", "--epochs", "1", "--teacher",
                str(run_inputs / "teacher"), "--allow-collapse")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric_name"] == "entity_f1" and report["steps"][0]["name"] == method
    assert all(0 <= m["accuracy_onnx"] <= 1 for m in report["models"].values())


def test_exported_folder_runs_in_optimum_and_the_pipeline(run_inputs):
    pytest.importorskip("optimum.onnxruntime")
    folder = run_inputs / "dense-onnx"
    if not folder.is_dir():
        pytest.skip("the fisher run did not leave its dense export")
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline
    model = ORTModelForTokenClassification.from_pretrained(str(folder))
    tagger = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(str(folder)),
                      aggregation_strategy="simple")
    found = tagger("yesterday mary flew to paris")
    assert {(e["entity_group"], e["word"]) for e in found} >= {("PER", "mary"), ("LOC", "paris")}, found
