"""ONNX helpers shared by passes, targets and the CLI: load and check a model file, open an
ONNX Runtime session, encode examples into feeds, and measure accuracy of an ONNX folder.

Importing this module imports neither onnx nor onnxruntime: they load inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from compressor.errors import ArtifactError, ConfigError, DataError, ModelError, TargetError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_SUFFIX = ".data"  # model.onnx.data, which OnnxModel.size_bytes counts
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PROTO_LIMIT = 2 * 1024 ** 3 - 64 * 1024 ** 2  # protobuf's 2 GiB cap, less a margin
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class VerificationError(RuntimeError):
    """An ONNX model whose outputs differ from its reference by more than the tolerance.

    Not a user error: the pipeline turns it into a failed step (:class:`StepFailed`).
    """


def onnx_file(path_or_model) -> Path:
    """The ``model.onnx`` path of an :class:`OnnxModel`, a folder or a file path."""
    path = getattr(path_or_model, "path", None)
    if path is not None:
        return Path(path)
    p = Path(path_or_model)
    return p / MODEL_FILE if p.is_dir() else p


def output_folder(ctx) -> Path:
    """Where an ONNX-producing pass writes its folder: the step folder in a pipeline, or
    ``<workdir>/onnx`` outside one (never the workdir itself, which an atomic write replaces)."""
    return Path(ctx.step_dir) if ctx.step_dir is not None else ctx.out_dir() / "onnx"


def load_checked(path, full_check: bool = False):
    """Load an ONNX model (file, folder holding ``model.onnx``, or OnnxModel) and run
    ``onnx.checker.check_model`` on it; any problem is an :class:`ArtifactError` naming the path."""
    import onnx

    src = Path(getattr(path, "path", path))
    if not src.exists():
        raise ArtifactError(f"ONNX model {src} does not exist")
    file = onnx_file(src)
    if not file.is_file():
        raise ArtifactError(f"folder {src} has no {MODEL_FILE}: expected a Hugging Face ONNX folder")
    try:
        model = onnx.load(str(file))
    except Exception as exc:  # DecodeError, truncated file, missing external data
        raise ArtifactError(f"{file} is not a readable ONNX model: {_first_line(exc)}") from None
    try:
        if model.ByteSize() < PROTO_LIMIT:
            onnx.checker.check_model(model, full_check=full_check)
        else:
            onnx.checker.check_model(str(file), full_check=full_check)
    except Exception as exc:
        raise ArtifactError(f"{file} fails the ONNX checker: {_first_line(exc)}") from None
    return model


def graph_io(model) -> tuple[list[str], list[str]]:
    """Names of the real graph inputs (initializers excluded) and outputs of a ModelProto."""
    inits = {t.name for t in model.graph.initializer} | {
        s.values.name for s in model.graph.sparse_initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    return inputs, [o.name for o in model.graph.output]


PRIMARY_OUTPUTS = ("logits", "sentence_embedding")
"""What a model's predictions are read from: a classifier's or regressor's logits, an embedding
model's pooled sentence embedding."""


def primary_output(session) -> str:
    """The name of the session's prediction output (:data:`PRIMARY_OUTPUTS`)."""
    names = [o.name for o in session.get_outputs()]
    return next((n for n in PRIMARY_OUTPUTS if n in names), names[0])


def check_bert_io(model, source=None) -> None:
    """Raise ArtifactError unless the graph takes input_ids, attention_mask (and optionally
    token_type_ids) and gives ``logits``. ``source`` (a path) names the model in the message."""
    inputs, outputs = graph_io(model)
    ok = ("input_ids" in inputs and "attention_mask" in inputs and set(inputs) <= set(BERT_INPUTS)
          and (any(o in outputs for o in PRIMARY_OUTPUTS) or {"start_logits", "end_logits"} <= set(outputs)))
    if not ok:
        name = source or f"graph {model.graph.name!r}"
        raise ArtifactError(
            f"{name} is not a BERT-style sequence-classification ONNX (inputs "
            f"{', '.join(inputs) or 'none'}; outputs {', '.join(outputs) or 'none'}; expected "
            "input_ids, attention_mask[, token_type_ids] -> logits)")


def make_session(path, providers: Iterable[str] = ("CPUExecutionProvider",), threads: int = 0,
                 graph_optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` on ``path`` (file, folder or OnnxModel).

    ``threads`` = 0 lets ORT use all cores. Fails loudly (TargetError) when a requested provider
    is unavailable or the session silently fell back to another one.
    """
    import onnxruntime as ort

    if graph_optimization not in _OPT_LEVELS:
        raise ConfigError(f"graph_optimization={graph_optimization!r} is not allowed: choose one of "
                          f"{', '.join(_OPT_LEVELS)}")
    if threads < 0:
        raise ConfigError(f"threads={threads!r} is out of range: allowed 0 (all cores) or more")
    providers = list(providers)
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise TargetError(f"execution provider(s) {', '.join(missing)} not available: this "
                          f"onnxruntime has {', '.join(available)}")
    file = onnx_file(path)
    if not file.is_file():
        raise ArtifactError(f"ONNX model {file} does not exist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization])
    try:
        sess = ort.InferenceSession(str(file), sess_options=opts, providers=providers)
    except Exception as exc:
        raise ArtifactError(f"onnxruntime cannot load {file}: {_first_line(exc)}") from None
    used = sess.get_providers()
    if any(p not in used for p in providers):
        raise TargetError(f"session for {file} asked for {', '.join(providers)} but uses "
                          f"{', '.join(used)} (silent fallback)")
    return sess


def session_input_names(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def encode(tokenizer, examples, max_length: int, pad_to: int | None = None,
           input_names: Iterable[str] | None = None) -> dict:
    """Tokenize examples (``compressor.data.Example``) into int64 numpy feeds.

    Padding goes to the longest example (``pad_to=None``) or to ``pad_to`` tokens; texts are
    truncated at ``max_length`` (question-answering examples: the context only, so each is its
    first window of question and context). With ``input_names`` (a session's inputs), only those feeds are
    returned: token_type_ids is dropped when the graph lacks it and zero-filled when the graph
    wants it but the tokenizer gives none.
    """
    import numpy as np

    examples = list(examples)
    if not examples:
        raise DataError("no examples to encode: expected at least one")
    pairs = [e.text_pair for e in examples]
    if any(p is not None for p in pairs) and any(p is None for p in pairs):
        raise DataError("examples mix single texts and text pairs: expected one kind per batch")
    kwargs = dict(truncation="only_second" if any(getattr(e, "qa", None) is not None for e in examples) else True,
                  return_tensors="np")
    if pad_to is None:
        kwargs.update(padding="longest", max_length=max_length)
    else:
        kwargs.update(padding="max_length", max_length=min(pad_to, max_length))
    texts = [e.text for e in examples]
    enc = tokenizer(texts, pairs, **kwargs) if pairs[0] is not None else tokenizer(texts, **kwargs)
    feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in BERT_INPUTS}
    if input_names is not None:
        names = list(input_names)
        if "token_type_ids" in names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ArtifactError(f"model inputs {', '.join(missing)} cannot be fed from a tokenizer: "
                                f"expected {', '.join(BERT_INPUTS)}")
        feeds = {n: feeds[n] for n in names}
    return feeds


def word_starts(tokenizer, examples, max_length: int) -> list[list[int]]:
    """Per example (with ``words``), the token position of each word's first sub-word in its
    encoding of ``text`` (the words joined by spaces, truncated at ``max_length``), -1 for a word
    with none (cut by truncation). Sub-words are placed by the last character of their offsets
    (a BPE piece may start at the space before its word). Needs a fast tokenizer."""
    from bisect import bisect_right

    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("token classification needs a fast tokenizer: its offsets map sub-words to words")
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length,
                    return_offsets_mapping=True)
    out = []
    for e, offsets in zip(examples, enc["offset_mapping"]):
        starts, pos = [], 0
        for w in e.words:
            starts.append(pos)
            pos += len(w) + 1
        first = [-1] * len(e.words)
        for t, (a, b) in enumerate(offsets):
            w = bisect_right(starts, b - 1) - 1
            if b > a and w >= 0 and first[w] < 0:
                first[w] = t
        out.append(first)
    return out


def random_feeds(input_names: Iterable[str], batch: int, seq: int, vocab_size: int = 1000,
                 seed: int = 0) -> dict:
    """Random BERT feeds (int64): token ids in [0, vocab_size), the last row of a batch > 1
    padded from the middle on, token_type_ids zero."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, max(int(vocab_size), 2), size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        mask[-1, max(1, seq // 2):] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in input_names}


def onnx_predict_logits(session, tokenizer, examples, max_length: int, batch_size: int = 64):
    """Logits (float32, ``[len(examples), num_labels]``) of an ORT session, batch by batch; a
    token classifier's ``[len(examples), S, num_labels]``, zero-padded to the longest batch."""
    import numpy as np

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is out of range: allowed 1 or more")
    examples, names, out = list(examples), session_input_names(session), []
    output = primary_output(session)
    for start in range(0, len(examples), batch_size):
        feeds = encode(tokenizer, examples[start:start + batch_size], max_length, input_names=names)
        out.append(session.run([output], feeds)[0])
    if not out:
        raise DataError("no examples to predict: expected at least one")
    if out[0].ndim == 3:
        longest = max(o.shape[1] for o in out)
        out = [np.pad(o, ((0, 0), (0, longest - o.shape[1]), (0, 0))) for o in out]
    return np.concatenate(out).astype(np.float32)


def folder_tokenizer(folder):
    """The tokenizer saved beside an ONNX model (``folder``); ArtifactError when there is none."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # OSError, ValueError: no or broken tokenizer files
        raise ArtifactError(f"no usable tokenizer in {folder}: {_first_line(exc)}") from None


def onnx_logits(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                providers: Iterable[str] = ("CPUExecutionProvider",)):
    """Logits (float32 numpy ``[len(examples), num_labels]``) of an ONNX folder (tokenizer loaded
    from the same folder) on ``examples``; DataError for none."""
    examples = list(examples)
    if not examples:
        raise DataError("no eval examples: expected at least one to measure accuracy")
    file = onnx_file(folder_or_onnxmodel)
    tokenizer = folder_tokenizer(file.parent)
    session = make_session(file, providers=providers)
    return onnx_predict_logits(session, tokenizer, examples, max_length, batch_size)


def onnx_correct(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                 providers: Iterable[str] = ("CPUExecutionProvider",)):
    """Per-example correctness (int8 numpy array of 0/1, in the order of ``examples``) of an ONNX
    folder (tokenizer loaded from the same folder) on labelled examples: what paired intervals
    between two models on the same rows are computed from (:mod:`compressor.stats`)."""
    import numpy as np

    examples = list(examples)
    logits = onnx_logits(folder_or_onnxmodel, examples, max_length, batch_size, providers)
    labels = np.asarray([e.label for e in examples])
    return (logits.argmax(axis=-1) == labels).astype(np.int8)


def onnx_predictions(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                     providers: Iterable[str] = ("CPUExecutionProvider",)):
    """A regression model's predictions (float32 numpy ``[len(examples)]``: its single output,
    ``logits[:, 0]``) of an ONNX folder on ``examples``."""
    return onnx_logits(folder_or_onnxmodel, examples, max_length, batch_size, providers)[:, 0]


def onnx_probabilities(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                       providers: Iterable[str] = ("CPUExecutionProvider",)):
    """A multi-label model's probabilities (float numpy ``[len(examples), K]``: the sigmoid of its
    logits) of an ONNX folder on ``examples``."""
    import numpy as np
    logits = onnx_logits(folder_or_onnxmodel, examples, max_length, batch_size, providers).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


def tagging_counts_of(logits, tokenizer, examples, max_length: int, names: list[str]):
    """Per-sentence entity counts (int numpy ``[n, 3]``: matches, predicted, gold;
    :func:`compressor.metrics.entity_counts`) of a token classifier's ``logits [n, S, C]`` on
    ``examples``: each word tagged by its first sub-word (right padding), ``O`` where cut."""
    import numpy as np

    from compressor.metrics import tagging_counts, word_tags
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ModelError("token classification reads each word's tag at its first sub-word: the tokenizer "
                         f"must pad on the right (it pads on the {tokenizer.padding_side})")
    preds = word_tags(logits.argmax(axis=-1).tolist(), word_starts(tokenizer, examples, max_length))
    return np.asarray(tagging_counts([e.label for e in examples], preds, names), dtype=np.int64).reshape(-1, 3)


def onnx_tagging_counts(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                        providers: Iterable[str] = ("CPUExecutionProvider",)):
    """Per-sentence entity counts (:func:`tagging_counts_of`) of an ONNX token classifier's folder
    (tokenizer and tag names, ``id2label`` of its config.json, from the same folder): what micro
    F1 and its bootstrap intervals are computed from (:mod:`compressor.stats`)."""
    import json

    from compressor.metrics import tag_names
    examples = list(examples)
    file = onnx_file(folder_or_onnxmodel)
    logits = onnx_logits(file, examples, max_length, batch_size, providers)
    names = tag_names(json.loads((file.parent / "config.json").read_text()))
    return tagging_counts_of(logits, folder_tokenizer(file.parent), examples, max_length, names)


def onnx_accuracy(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                  providers: Iterable[str] = ("CPUExecutionProvider",), threshold: float | str | None = None) -> float:
    """Accuracy of an ONNX folder (tokenizer loaded from the same folder) on labelled examples
    (the mean of :func:`onnx_correct`); for regression examples (float labels) the task metric,
    Pearson's r of :func:`onnx_predictions` (:mod:`compressor.metrics`); for token-classification
    examples entity-level micro F1 (:func:`onnx_tagging_counts`); for multi-label examples micro F1
    of :func:`onnx_probabilities` at ``threshold`` (None: 0.5; ``"dev"``: chosen on these rows, for a
    dev split only); for question-answering examples SQuAD F1 (:func:`onnx_qa_scores`)."""
    from compressor.metrics import TOKEN_METRIC, f1_from_counts, is_embedding, is_regression, is_tagging, pearson
    examples = list(examples)
    from compressor.metrics import is_multi_label
    if is_multi_label(examples):
        from compressor.metrics import DEFAULT_THRESHOLD, MULTI_LABEL_METRIC, choose_threshold, multi_label_scores
        probs, gold = onnx_probabilities(folder_or_onnxmodel, examples, max_length, batch_size, providers), \
            [e.label for e in examples]
        t = choose_threshold(probs, gold) if threshold == "dev" else DEFAULT_THRESHOLD if threshold is None else threshold
        return multi_label_scores(probs, gold, t)[MULTI_LABEL_METRIC]
    from compressor.metrics import is_qa
    if is_qa(examples):  # SQuAD F1 over the questions
        return float(onnx_qa_scores(folder_or_onnxmodel, examples, max_length, batch_size, providers)[1].mean())
    if is_tagging(examples):  # entity-level micro F1
        counts = onnx_tagging_counts(folder_or_onnxmodel, examples, max_length, batch_size, providers)
        return f1_from_counts(*counts.sum(0).tolist())[TOKEN_METRIC]
    if is_embedding(examples):  # the mean cosine of its sentence embeddings to the dense model's
        from compressor.embedding_metrics import fidelity
        found = onnx_logits(folder_or_onnxmodel, examples, max_length, batch_size, providers)
        return float(fidelity(found, [e.label for e in examples]).mean())
    if is_regression(examples):
        preds = onnx_predictions(folder_or_onnxmodel, examples, max_length, batch_size, providers)
        return pearson(preds.tolist(), [e.label for e in examples])
    correct = onnx_correct(folder_or_onnxmodel, examples, max_length, batch_size, providers)
    return float(int(correct.sum()) / correct.size)


def accuracy_change(before_model, after_model, ctx, max_length: int, max_eval: int | None,
                    max_drop: float, what: str) -> dict:
    """ORT accuracy of an ONNX pass's input and output on ``ctx.data.eval`` (subsampled to
    ``max_eval`` if set); a drop above ``max_drop`` (< 1; 1 = never) fails the step. Empty without eval data.
    A regression task's "accuracy" is Pearson's r (:func:`onnx_accuracy`); a multi-label task's
    micro F1 at 0.5 for both (the same rule on both sides: no threshold is chosen on eval)."""
    data = getattr(ctx, "data", None)
    examples = list(getattr(data, "eval", None) or [])
    if not examples:
        return {}
    if max_eval:
        examples = data.subsample(max_eval=max_eval, seed=ctx.seed).eval
    before = onnx_accuracy(before_model, examples, max_length)
    after = onnx_accuracy(after_model, examples, max_length)
    drop = before - after
    if max_drop < 1 and drop > max_drop:  # 1 = never (Pearson's r of a regression task can drop by up to 2)
        raise VerificationError(f"{what} accuracy {after:.4f} is {drop:.4f} below the input's {before:.4f}: "
                                f"more than max_accuracy_drop={max_drop:g}")
    return {"accuracy_input": before, "accuracy_onnx": after, "accuracy_drop": drop,
            "eval_examples": len(examples)}


def save_model(model, path, external: bool | None = None) -> Path:
    """Save a ModelProto to ``path``; tensors go to one ``<name>.data`` file beside it when
    ``external`` is True, or (``None``) when the proto would pass protobuf's 2 GiB limit."""
    import onnx

    path = Path(path)
    if external is None:
        external = model.ByteSize() >= PROTO_LIMIT
    if external:
        location = path.name + EXTERNAL_DATA_SUFFIX
        log.info("saving %s with external data in %s", path, location)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
def onnx_span_logits(session, tokenizer, examples, max_length: int, batch_size: int = 64):
    """``(windows, start logits, end logits)`` of an ORT session of a QA model on ``examples``
    (one list of per-window float arrays each, cut to the window's tokens)."""
    from compressor.qa import window_feeds, windows
    wins = windows(tokenizer, examples, max_length)
    names, starts, ends = session_input_names(session), [], []
    pad = tokenizer.pad_token_id or 0
    for i in range(0, len(wins), batch_size):
        chunk = wins[i:i + batch_size]
        s, e = session.run(["start_logits", "end_logits"], window_feeds(chunk, names, pad))
        for k, w in enumerate(chunk):
            n = len(w.inputs["input_ids"])
            starts.append(s[k, :n])
            ends.append(e[k, :n])
    return wins, starts, ends


def onnx_qa_scores(folder_or_onnxmodel, examples, max_length: int = 128, batch_size: int = 64,
                   providers=("CPUExecutionProvider",)):
    """Per-question ``(exact match, F1)`` numpy arrays of an ONNX QA folder (tokenizer from the
    same folder) on ``examples``: what the report's scores and intervals are computed from."""
    import numpy as np

    from compressor.qa import qa_scores
    examples = list(examples)
    if not examples:
        raise DataError("no eval examples: expected at least one to measure accuracy")
    file = onnx_file(folder_or_onnxmodel)
    session = make_session(file, providers=providers)
    wins, starts, ends = onnx_span_logits(session, folder_tokenizer(file.parent), examples, max_length, batch_size)
    em, f1 = qa_scores(examples, wins, starts, ends)
    return np.asarray(em, dtype=np.float64), np.asarray(f1, dtype=np.float64)


