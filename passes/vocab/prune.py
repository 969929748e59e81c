"""``vocab-prune``: keep only the vocabulary a task uses (torch -> torch).

In all-MiniLM-L6-v2 the word embeddings are 30,522 x 384 = 11.7M of 22.7M parameters; a task
uses a fraction of the tokens (Rotten Tomatoes' training texts: 13,578). Kept are the tokens the
training texts use (at least ``min_count`` times), every special token ([PAD], [UNK], [CLS],
[SEP], [MASK], the tokenizer's special map, ``config.*_token_id``), the tokens of the texts in
``vocab_texts`` (e.g. a sample of production traffic) and, with ``keep_chars``, the
single-character pieces ``c`` / ``##c``. The rest is dropped, and everything that names token ids
is rewritten consistently: embedding rows (and an output layer over the vocabulary, tied or not),
``config.vocab_size`` and ``*_token_id``, and the tokenizer files (vocab.txt, tokenizer.json's
WordPiece vocab, added tokens, post-processor and padding ids, tokenizer_config.json's
added_tokens_decoder); the saved folder loads with ``AutoTokenizer`` and, once exported, with
Optimum's ORT classes. Vocabulary pruning as in TextPruner (Yang et al., "TextPruner: A Model
Pruning Toolkit for Pre-Trained Language Models", ACL 2022 demo, arXiv:2203.15996, Sec. 3.1).

Why the training texts tokenize exactly as before: WordPiece takes, at each position of a word,
the longest piece in the vocabulary. With a kept vocabulary V' inside V, a word whose old pieces
are all in V' gets the same pieces: the old longest match is in V', and a longer match in V'
would be one in V. So with ``min_count=1`` every training text gives the old ids remapped, and no
extra "prefix candidate" pieces are needed for them; the pass checks this on every training text
and ``vocab_texts`` line anyway and fails loudly otherwise (with ``min_count`` > 1 it checks the
texts whose tokens are all kept and counts the others). Unseen words can split differently
(a longest piece was dropped) or become [UNK] (no piece matches at some position; keeping the
single characters makes that rare): the eval split's fractions and, on the eval examples whose
tokens change, the accuracy change are reported.

The tokenizer's kind is read from tokenizer.json's ``model.type``; anything but WordPiece, BPE
and Unigram is refused with one line. Byte-level BPE (RoBERTa, ModernBERT, :mod:`.bpe`): the
byte alphabet always stays (nothing becomes unknown), so do the intermediate tokens on the
merge path of every kept token, and a merge stays only when its two parts and its result stay;
then every word whose old tokens are kept splits as before. Unigram (XLM-R, CamemBERT,
DeBERTa-v3, :mod:`.unigram`): removing pieces can change the best segmentation only through new
unknown nodes, so the lowest-scoring piece and the single-character pieces of the characters the
texts use stay, and a training text that still splits differently gets its characters back.
RoBERTa-style models number positions after the pad id, so it keeps its value (the ids below it
stay). The check on every training text is the same for all kinds.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import TorchModel
from compressor.data import Example
from compressor.errors import DataError, check_choice, check_range
from compressor.pass_base import Pass, PassResult, option
from passes.vocab import compare as vc
from passes.vocab import embeddings as ve
from passes.vocab import tokenizer as vt
from passes.vocab import unigram as vuni

log = logging.getLogger(__name__)

KEEP_CHARS = ("none", "ascii", "all")


@dataclass(frozen=True)
class VocabPrune(Pass):
    """Drop the tokens the task does not use from the embeddings and the tokenizer."""

    name: ClassVar[str] = "vocab-prune"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"
    run_order: ClassVar[int] = 40  # after every pass that feeds the teacher the student's token ids

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--vocab-prune`` (``--vocab-texts FILE``)."""
        if not cfg.vocab_prune:
            return None
        texts = f",vocab_texts={cfg.vocab_texts}" if cfg.vocab_texts else ""
        return f"vocab-prune{{max_length={cfg.max_length}{texts}}}"

    min_count: int = option(1, "keep a token the training texts use at least this many times")
    vocab_texts: str = option("", "file of extra texts whose tokens are kept: one per line, or "
                              "TSV/CSV/JSONL with a text column")
    keep_chars: str = option("ascii", "also keep single-character pieces (WordPiece c, ##c; Unigram: the "
                             "characters seen) so unseen words split into characters rather than "
                             "the unknown token (byte-level BPE keeps its byte alphabet always)",
                             choices=KEEP_CHARS)
    measure_accuracy: bool = option(True, "evaluate old and new model on the eval examples whose "
                                    "tokens change (the others give identical logits)")
    max_length: int = option(128, "truncate inputs to this many tokens when measuring accuracy")

    def __post_init__(self):
        check_range("vocab-prune.min_count", self.min_count, 1, 10**9)
        check_choice("vocab-prune.keep_chars", self.keep_chars, KEEP_CHARS)
        check_range("vocab-prune.max_length", self.max_length, 8, 4096)
        if self.vocab_texts and not Path(self.vocab_texts).expanduser().is_file():
            raise DataError(f"vocab-prune.vocab_texts={self.vocab_texts!r}: file not found")

    def run(self, artifact, ctx) -> PassResult:
        model, tok = artifact.model, artifact.tokenizer
        data = vt.tokenizer_data(tok)
        kind = vt.tokenizer_kind(tok, data)
        train = list(getattr(getattr(ctx, "data", None), "train", None) or [])
        extra = vt.read_texts(Path(self.vocab_texts).expanduser()) if self.vocab_texts else []
        if not train and not extra:
            raise DataError("pass 'vocab-prune' needs texts: give a task (e.g. --task rotten-tomatoes) "
                            "or vocab_texts=FILE")
        counts = vt.count_tokens(tok, vt.example_texts(train))
        by_train = {i for i, c in counts.items() if c >= self.min_count}
        by_extra = set(vt.count_tokens(tok, extra)) if extra else set()
        by_special = vt.special_ids(tok, model.config)
        by_chars = vt.char_ids(tok, self.keep_chars)
        keep = by_train | by_extra | by_special | by_chars
        kept_by = {"train": len(by_train), "vocab_texts": len(by_extra),
                   "special": len(by_special), "chars": len(by_chars)}
        if kind != "WordPiece" or ve.pinned_ids(model) - keep:
            keep = self._structural(tok, kind, data, model, keep, vt.example_texts(train) + extra, kept_by)
        keep = sorted(keep)
        examples = train + [Example(t, 0) for t in extra]
        new_tok, keep = self._new_tokenizer(tok, kind, data, keep, examples, kept_by)
        rows = model.get_input_embeddings().weight.shape[0]
        metrics = {"vocab_before": rows, "vocab_after": len(keep), "kept_by": kept_by,
                   "embedding_params_before": _embedding_params(model)}
        if kind != "WordPiece":
            metrics["tokenizer_kind"] = kind
        new_model = copy.deepcopy(model)
        shape = ve.prune_embeddings(new_model, keep)
        metrics["embedding_params_after"] = _embedding_params(new_model)
        metrics["tied_output"] = shape["tied_output"]
        checked = vc.verify_remapped(tok, new_tok, keep, examples)
        metrics.update({f"train_{k}": v for k, v in checked.items()})
        evals = list(getattr(getattr(ctx, "data", None), "eval", None) or [])
        if evals:
            stats = vc.split_stats(tok, new_tok, keep, vt.example_texts(evals), kind)
            metrics.update({f"eval_{k}": v for k, v in stats.items()})
            if self.measure_accuracy:
                metrics.update(self._accuracy_change(model, tok, new_model, new_tok, keep, evals, kind))
        info = {**artifact.info, "vocab_pruned": {"vocab": len(keep), "spec": self.to_spec()}}
        out = TorchModel(new_model, new_tok, info)
        out.save(ctx.out_dir() / "model")
        log.info("vocab-prune: %d -> %d tokens, embedding params %d -> %d, eval [UNK] %s, split "
                 "changed %s", rows, len(keep), metrics["embedding_params_before"],
                 metrics["embedding_params_after"], metrics.get("eval_unk_fraction"),
                 metrics.get("eval_changed_split_fraction"))
        return PassResult(out, len(keep) < rows, metrics)

    def _structural(self, tok, kind, data, model, keep, texts, kept_by) -> set[int]:
        """``keep`` plus what the kind's splits need (BPE: byte alphabet and merge paths;
        Unigram: lowest score, seen characters) and the ids a padding id positions depend on
        (RoBERTa: ``<s>`` below ``<pad>``)."""
        pinned = ve.pinned_ids(model)
        more, by = vt.structural_ids(tok, kind, data, keep | pinned, self.keep_chars, texts)
        if pinned - keep:
            by["pad_position"] = len(pinned - keep)
        kept_by.update(by)
        return keep | pinned | more

    def _new_tokenizer(self, tok, kind, data, keep, examples, kept_by, rounds: int = 4):
        """The pruned tokenizer. For Unigram, a training text whose old pieces all stay but that
        splits differently (an unknown node where a dropped single-character piece was) gets
        its characters' pieces back, and the tokenizer is rebuilt, up to ``rounds`` times."""
        added = 0
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="vocab-prune-") as tmp:
                new_tok = vt.pruned_tokenizer(tok, keep, Path(tmp))
            if kind != "Unigram":
                break
            bad = vc.mismatches(tok, new_tok, keep, examples)
            more = vuni.char_ids(tok, data["model"], vt.example_texts(bad)) - set(keep) if bad else set()
            if not more:
                break
            added += len(more)
            keep = sorted(set(keep) | more)
        if added:
            kept_by["added_back"] = added
        return new_tok, keep

    def _accuracy_change(self, model, tok, new_model, new_tok, keep, evals, kind="WordPiece") -> dict:
        """Accuracy before/after on the whole eval split, computed from the examples whose ids
        change (the others map to the same embeddings, so their logits are identical). WordPiece:
        those with a dropped old id; BPE, Unigram: those whose new ids are not the old remapped.
        A regression, token-classification or question-answering task: the change of Pearson's r,
        entity F1 or SQuAD F1, measured on the whole split."""
        from compressor.evaluation import predict_logits
        from compressor.metrics import is_embedding, is_multi_label, is_qa, is_regression, is_tagging

        kept = set(keep)
        pairs = [e.text_pair for e in evals] if evals[0].text_pair else None
        qa = is_qa(evals)  # a QA model reads the whole context (in windows): every token counts
        cut = {} if qa else {"truncation": True, "max_length": self.max_length}
        old_ids = tok([e.text for e in evals], pairs, **cut)["input_ids"]
        if kind == "WordPiece":
            changed = [e for e, ids in zip(evals, old_ids) if not kept.issuperset(ids)]
        else:
            remap = {old: new for new, old in enumerate(keep)}
            new_ids = new_tok([e.text for e in evals], pairs, **cut)["input_ids"]
            changed = [e for e, o, n in zip(evals, old_ids, new_ids) if [remap.get(i, -1) for i in o] != list(n)]
        if not changed:
            return {"eval_examples_changed": 0, "accuracy_change": 0.0}
        if qa or is_regression(evals) or is_tagging(evals) or is_embedding(evals) or is_multi_label(evals):  # r, F1, fidelity
            from compressor.evaluation import evaluate
            change = evaluate(new_model, new_tok, evals, self.max_length) - evaluate(model, tok, evals, self.max_length)
            return {"eval_examples_changed": len(changed), "accuracy_change": round(change, 6)}
        labels = [int(e.label) for e in changed]
        before = predict_logits(model, tok, changed, self.max_length).argmax(-1).tolist()
        after = predict_logits(new_model, new_tok, changed, self.max_length).argmax(-1).tolist()
        right = lambda preds: sum(int(p == y) for p, y in zip(preds, labels))  # noqa: E731
        return {"eval_examples_changed": len(changed),
                "accuracy_change": round((right(after) - right(before)) / len(evals), 6),
                "predictions_flipped": sum(int(a != b) for a, b in zip(before, after))}


def _embedding_params(model) -> int:
    """Parameters of the word embeddings plus an untied output layer over the vocabulary."""
    emb = model.get_input_embeddings()
    n = emb.weight.numel()
    out = model.get_output_embeddings()
    if out is not None and out.weight is not emb.weight and out.weight.shape[0] == emb.weight.shape[0]:
        n += out.weight.numel()
    return n
