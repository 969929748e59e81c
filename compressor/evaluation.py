"""Evaluation helpers of the core: tokenised datasets, dynamic-padding batches, logits and accuracy
of a PyTorch model on a list of examples. Used by ``compress run`` (accuracy of the dense and
compressed models) and by every training pass.

A regression task's examples carry float labels: batches hold them as a float tensor (what HF's
``problem_type="regression"`` head takes for its MSE loss), and :func:`evaluate` gives its task
metric, Pearson's r of the single output (:mod:`compressor.metrics`).

A token-classification task's examples carry a tag id per word: the first sub-word of each word
gets the word's tag and every other position :data:`IGNORE` (-100, skipped by HF's loss, the KD
terms and the metric), found from the fast tokenizer's offsets (:func:`word_starts`); its logits
are ``[N, S, C]`` and :func:`evaluate` gives entity-level F1 of the words' tags.

A multi-label task's examples carry a :class:`~compressor.metrics.MultiHot` label: batches hold it
as a float tensor ``[B, K]`` (what HF's ``problem_type="multi_label_classification"`` head takes
for its BCE-with-logits loss), and :func:`evaluate` gives micro F1 of the sigmoid outputs at a
threshold (0.5 unless given; a run chooses it on dev).

A question-answering task's examples (:mod:`compressor.qa`) become windows: a row per window
(``idx`` its position in the windows, not in the examples), labelled with its answer's start and
end token positions (``[B, 2]``, CLS 0 for none), which a QA model takes as ``start_positions`` and
``end_positions`` (:func:`label_kwargs`). Its logits (:func:`logits_of`) are the start and end
logits stacked, ``[B, S, 2]``, with padded positions at :data:`SPAN_MASK`, and :func:`evaluate`
gives SQuAD F1 of the answers read from every window of each question.

torch is imported at module level: import this module only where a model is evaluated.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from compressor.metrics import is_embedding, is_multi_label, is_qa, is_regression, is_tagging, pearson
from compressor.onnx_utils import word_starts

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE = -100
"""The label of a sub-word position without a tag (not a word's first sub-word, special tokens,
padding): ignored by the loss and the metric."""
SPAN_MASK = -10000.0
"""A QA model's start/end logit at a padded position (:func:`logits_of`): no softmax over the
sequence (loss, KD) gives it weight."""



class EncodedDataset(Dataset):
    """Tokenised examples (text or text pair) truncated to ``max_length``; item ``i`` carries
    ``labels`` (an int, or a float for regression examples) and ``idx = i`` (its position in
    ``examples``)."""

    def __init__(self, tokenizer, examples, max_length: int):
        self.tags, self.windows = None, None  # token classification's word tags, QA's windows
        if is_qa(examples):  # a row per window, labelled (start, end)
            from compressor.qa import windows
            self.examples, self.windows = list(examples), windows(tokenizer, examples, max_length)
            self.keys = [k for k in INPUT_KEYS if self.windows and k in self.windows[0].inputs]
            self.rows = [{k: w.inputs[k] for k in self.keys} for w in self.windows]
            self.labels = [(w.start, w.end) for w in self.windows]
            return
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples]
        if all(p is None for p in pairs):
            enc = tokenizer(texts, truncation=True, max_length=max_length)
        elif all(p is not None for p in pairs):
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        else:  # mixed single texts and pairs: one at a time
            rows = [tokenizer(t, p, truncation=True, max_length=max_length) for t, p in zip(texts, pairs)]
            enc = {k: [r[k] for r in rows] for k in rows[0].keys()} if rows else {}
        self.keys = [k for k in INPUT_KEYS if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(examples))]
        self.tags = None  # token classification: the word-level tag ids (gold, every word)
        if is_tagging(examples):
            self.tags = [list(e.label) for e in examples]
            self.labels = []
            for row, tags, first in zip(self.rows, self.tags, word_starts(tokenizer, examples, max_length)):
                labels = [IGNORE] * len(row["input_ids"])
                for tag, pos in zip(tags, first):
                    if pos >= 0:
                        labels[pos] = int(tag)
                self.labels.append(labels)
            return
        self.multi_label = is_multi_label(examples)  # 0/1 per label, as floats (BCE targets)
        if self.multi_label:
            self.labels = [tuple(float(b) for b in e.label) for e in examples]
            return
        as_label = tuple if is_embedding(examples) else float if is_regression(examples) else int
        self.labels = [as_label(e.label) for e in examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "labels": self.labels[i], "idx": i}


class PadCollator:
    """Dynamic padding: pad every field to the longest sequence in the batch (right side); token
    labels (lists) with :data:`IGNORE`."""

    def __init__(self, pad_token_id: int | None):
        self.pad = 0 if pad_token_id is None else int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key in INPUT_KEYS:
            if key in features[0]:
                fill = self.pad if key == "input_ids" else 0
                batch[key] = torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features])
        labels = [f["labels"] for f in features]
        if isinstance(labels[0], list):
            labels = [row + [IGNORE] * (longest - len(row)) for row in labels]
        batch["labels"] = torch.tensor(labels)
        batch["idx"] = torch.tensor([f["idx"] for f in features])
        return batch


def make_loader(tokenizer, examples, max_length: int, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader of padded batches with ``labels`` and ``idx`` (seeded order if ``shuffle``)."""
    ds = EncodedDataset(tokenizer, examples, max_length)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=PadCollator(tokenizer.pad_token_id))


def model_inputs(batch: dict) -> dict:
    """The model's input tensors of a batch (no ``labels``/``idx``)."""
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


def is_qa_model(model) -> bool:
    """Whether ``model`` (or the module DDP wraps) is a ``...ForQuestionAnswering``."""
    return type(getattr(model, "module", model)).__name__.endswith("ForQuestionAnswering")


def label_kwargs(model, labels: torch.Tensor) -> dict:
    """The forward's label arguments for a batch's ``labels``: ``labels``, or for a QA model
    ``start_positions`` and ``end_positions`` (its loss is the mean of their cross-entropies)."""
    if is_qa_model(model):
        return {"start_positions": labels[:, 0], "end_positions": labels[:, 1]}
    return {"labels": labels}


def logits_of(outputs, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A forward's logits: ``outputs.logits``, or a QA model's start and end logits stacked
    ``[B, S, 2]`` with the padded positions of ``attention_mask`` set to :data:`SPAN_MASK`."""
    if getattr(outputs, "start_logits", None) is None:
        return outputs.logits
    z = torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)
    if attention_mask is not None:
        z = z.masked_fill(attention_mask.to(z.device)[..., None] == 0, SPAN_MASK)
    return z


def predict_logits(model, tokenizer, examples, max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Logits ``[N, num_labels]`` (CPU, float32) of ``examples`` in order, under no_grad in eval
    mode (the model's train/eval mode is restored afterwards). A token classifier's are
    ``[N, S, num_labels]``, right-padded with zeros to the longest batch's ``S``; a QA model's
    ``[windows, S, 2]`` (:func:`logits_of`), a row per window of ``examples``."""
    loader = make_loader(tokenizer, examples, max_length, batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            out.append(logits_of(model(**inputs), inputs.get("attention_mask")).float().cpu())
    model.train(was_training)
    if out and out[0].dim() == 3:
        longest = max(o.shape[1] for o in out)
        out = [torch.nn.functional.pad(o, (0, 0, 0, longest - o.shape[1])) for o in out]
    return torch.cat(out) if out else torch.empty(0, 0)


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """Which rows of a batch's ``labels`` carry a label: class ids >= 0 (-1 marks unlabelled
    text), or for regression (float labels) every finite score (a score may be negative), for
    embedding targets (``[batch, dim]``) every row with finite values, for token tags
    (``[batch, seq]``) every row with a tag."""
    if labels.is_floating_point():
        ok = torch.isfinite(labels)
        return ok.all(-1) if ok.dim() > 1 else ok
    return labels >= 0 if labels.dim() == 1 else (labels >= 0).any(-1)


def evaluate(model, tokenizer, examples, max_length: int, batch_size: int = 64,
             threshold: float | str | None = None) -> float:
    """Accuracy of ``model`` on ``examples`` (0.0 for an empty list); for regression examples
    (float labels) Pearson's r of the model's single output; for multi-label examples micro F1 of
    its sigmoid outputs at ``threshold`` (None: 0.5, or, for dev rows only, ``"dev"``: the best
    of :data:`compressor.metrics.THRESHOLDS` on ``examples``); for token-classification examples
    entity-level micro F1 of the words' tags (:func:`compressor.metrics.entity_scores`); for
    embedding examples (vector labels, :mod:`compressor.embedder`) the fidelity, the mean cosine of
    the model's output to them; for question-answering examples SQuAD F1."""
    if not examples:
        return 0.0
    logits = predict_logits(model, tokenizer, examples, max_length, batch_size)
    if is_qa(examples):  # SQuAD F1 of the answers read from every window of each question
        from compressor.qa import qa_scores, windows
        _, f1 = qa_scores(examples, windows(tokenizer, examples, max_length), logits[..., 0].tolist(),
                          logits[..., 1].tolist())
        return sum(f1) / len(f1)
    if is_tagging(examples):
        from compressor.metrics import TOKEN_METRIC, f1_from_counts, tag_names, tagging_counts, word_tags
        preds = word_tags(logits.argmax(-1).tolist(), word_starts(tokenizer, examples, max_length))
        counts = tagging_counts([e.label for e in examples], preds, tag_names(model.config))
        return f1_from_counts(*(sum(c[k] for c in counts) for k in range(3)))[TOKEN_METRIC]
    if is_multi_label(examples):
        from compressor.metrics import DEFAULT_THRESHOLD, MULTI_LABEL_METRIC, choose_threshold, multi_label_scores
        probs, gold = torch.sigmoid(logits).tolist(), [e.label for e in examples]
        t = choose_threshold(probs, gold) if threshold == "dev" else DEFAULT_THRESHOLD if threshold is None else threshold
        return multi_label_scores(probs, gold, t)[MULTI_LABEL_METRIC]
    if is_embedding(examples):
        targets = torch.tensor([e.label for e in examples], dtype=torch.float32)
        return float(torch.nn.functional.cosine_similarity(logits, targets, dim=-1).mean())
    if is_regression(examples):
        return pearson(logits[:, 0].tolist(), [e.label for e in examples])
    labels = torch.tensor([int(e.label) for e in examples])
    return float((logits.argmax(-1) == labels).float().mean())
