"""vocab-prune's checks: how the old and the new tokenizer split words and texts.

``words`` are the pre-tokens the tokenizer's model splits (after the normalizer and the
pre-tokenizer: ``▁word`` for SentencePiece, byte symbols such as ``Ġword`` for byte-level BPE).
A WordPiece word is split by calling the tokenizer on it; a BPE or Unigram word is split by the
tokenizer's model directly (calling the tokenizer on ``Ġword`` would encode the ``Ġ`` again).
"""

from __future__ import annotations

import re
from collections import Counter

from compressor.onnx_utils import VerificationError


def words(tokenizer, text: str) -> list[str]:
    """The words (pre-tokens) the model splits: the fast tokenizer's normalizer and
    pre-tokenizer, the slow BERT tokenizer's basic tokenizer, or the slow GPT-2 style
    tokenizer's pattern and byte map."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        norm = backend.normalizer.normalize_str(text) if backend.normalizer else text
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(norm)] if backend.pre_tokenizer \
            else norm.split()
    basic = getattr(tokenizer, "basic_tokenizer", None)
    if basic is not None and getattr(tokenizer, "do_basic_tokenize", True):
        return basic.tokenize(text, never_split=tokenizer.all_special_tokens)
    if hasattr(tokenizer, "byte_encoder") and hasattr(tokenizer, "pat"):
        return ["".join(tokenizer.byte_encoder[b] for b in w.encode("utf-8"))
                for w in re.findall(tokenizer.pat, text)]
    return text.split()


def word_ids(tokenizer, kind: str, vocab: list[str]) -> list[list[int]]:
    """The ids each word of ``vocab`` splits into (no special tokens)."""
    if kind == "WordPiece":
        return tokenizer(vocab, add_special_tokens=False)["input_ids"]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [[t.id for t in backend.model.tokenize(w)] for w in vocab]
    return [tokenizer.convert_tokens_to_ids(tokenizer.bpe(w).split(" ")) for w in vocab]


def split_stats(old_tok, new_tok, keep: list[int], texts: list[str], kind: str = "WordPiece") -> dict:
    """Compare how the old and new tokenizer split the words of ``texts``, token-weighted by the
    old tokenization: ``unk_fraction`` (tokens in words that now become the unknown token),
    ``changed_split_fraction`` (tokens in words split differently, not unknown),
    ``words_changed_fraction``, ``texts_changed_fraction`` and ``tokens``. A word that becomes
    unknown is one split into the unknown token alone (WordPiece) or, for BPE and Unigram,
    one whose new split has an unknown token its old split did not have."""
    remap = {old: new for new, old in enumerate(keep)}
    per_text = [words(old_tok, t) for t in texts]
    counts = Counter(w for ws in per_text for w in ws)
    vocab = list(counts)
    if not vocab:
        return {"tokens": 0, "unk_fraction": 0.0, "changed_split_fraction": 0.0,
                "words_changed_fraction": 0.0, "texts_changed_fraction": 0.0}
    old_ids = word_ids(old_tok, kind, vocab)
    new_ids = word_ids(new_tok, kind, vocab)
    unk_old, unk_new = old_tok.unk_token_id, new_tok.unk_token_id
    status, tokens, unk, changed, words_changed = {}, 0, 0, 0, 0
    for w, o, n in zip(vocab, old_ids, new_ids):
        same = [remap.get(i, -1) for i in o] == list(n)
        if kind == "WordPiece":
            became_unk = not same and n == [unk_new] and o != [unk_old]
        else:
            became_unk = not same and unk_new is not None and n.count(unk_new) > list(o).count(unk_old)
        status[w] = same
        c = counts[w]
        tokens += c * len(o)
        if not same:
            words_changed += c
            if became_unk:
                unk += c * len(o)
            else:
                changed += c * len(o)
    total_words = sum(counts.values())
    texts_changed = sum(1 for ws in per_text if not all(status[w] for w in ws))
    return {"tokens": tokens, "unk_fraction": round(unk / max(tokens, 1), 6),
            "changed_split_fraction": round(changed / max(tokens, 1), 6),
            "words_changed_fraction": round(words_changed / max(total_words, 1), 6),
            "texts_changed_fraction": round(texts_changed / len(texts), 6)}


def compare_examples(old_tok, new_tok, keep: list[int], examples, batch: int = 512):
    """Yield ``(example, mapped, new)`` for every example (text and pair, special tokens, no
    truncation): the old ids remapped (-1 for a dropped id) and the new ids."""
    remap = {old: new for new, old in enumerate(keep)}
    examples = list(examples)
    groups = [[e for e in examples if e.text_pair is None], [e for e in examples if e.text_pair is not None]]
    for group in groups:
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            args = ([e.text for e in chunk],) + (([e.text_pair for e in chunk],) if chunk[0].text_pair else ())
            old = old_tok(*args, truncation=False)["input_ids"]
            new = new_tok(*args, truncation=False)["input_ids"]
            for e, o, n in zip(chunk, old, new):
                yield e, [remap.get(i, -1) for i in o], list(n)


def verify_remapped(old_tok, new_tok, keep: list[int], examples, batch: int = 512) -> dict:
    """Tokenize every example (text and pair, special tokens, no truncation) with both
    tokenizers. Where every old id is kept, the new ids must be exactly the old ids remapped:
    otherwise VerificationError naming the text. Returns ``{"texts_checked", "texts_with_dropped"}``."""
    checked = dropped = 0
    for e, mapped, n in compare_examples(old_tok, new_tok, keep, examples, batch):
        if -1 in mapped:
            dropped += 1
            continue
        checked += 1
        if mapped != n:
            raise VerificationError(f"pruned tokenizer splits {e.text[:80]!r} differently: old ids "
                                    f"remapped {mapped[:16]}..., new {n[:16]}...")
    return {"texts_checked": checked, "texts_with_dropped": dropped}


def mismatches(old_tok, new_tok, keep: list[int], examples) -> list:
    """The examples whose old ids are all kept but that the new tokenizer splits differently."""
    return [e for e, mapped, n in compare_examples(old_tok, new_tok, keep, examples)
            if -1 not in mapped and mapped != n]
