"""vocab-prune for SentencePiece Unigram tokenizers (XLM-R, CamemBERT, DeBERTa-v3): which pieces
must stay beside the used ones, and the kept vocabulary.

How Unigram splits a word (``tokenizers``' ``Unigram`` model): the best-scoring path through the
lattice of the pieces that match at each position (Viterbi, first best on a tie), where a
position with no single-character piece gets an unknown node scored ``min(scores) - 10``. With a
kept vocabulary inside the old one, a word whose old pieces all stay keeps its old path, and
every other path is an old path (no better, and found later on a tie) or one through a *new*
unknown node: a dropped single-character piece, or a lower unknown penalty when the lowest score
left. So kept beside the used pieces: the lowest-scoring piece (the penalty stays), the
single-character pieces of the characters the texts use (no new unknown nodes on them, and
unseen words made of seen characters still split into pieces rather than unknown; with
``keep_chars=none`` they are added back only for the texts that need them, see
:func:`char_ids`), and with byte fallback the 256 ``<0xXX>`` pieces. The pass checks the promise
on every training text with the real tokenizer.
"""

from __future__ import annotations

import re

from passes.vocab.compare import words

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def piece_ids(model: dict) -> dict[str, int]:
    return {piece: i for i, (piece, _) in enumerate(model["vocab"])}


def char_ids(tokenizer, model: dict, texts: list[str]) -> set[int]:
    """Ids of the single-character pieces of the characters in ``texts`` (after the
    tokenizer's normalizer and pre-tokenizer, e.g. with ``▁`` for spaces)."""
    chars = {c for t in texts for w in words(tokenizer, t) for c in w}
    ids = piece_ids(model)
    return {ids[c] for c in chars if c in ids}


def structural_ids(tokenizer, model: dict, keep_chars: str, texts: list[str]) -> tuple[set[int], dict]:
    """Ids that must stay beside the used ones: the unknown piece, the lowest-scoring piece,
    byte-fallback pieces and (unless ``keep_chars`` is none) the seen characters' pieces."""
    vocab = model["vocab"]
    lowest = min(range(len(vocab)), key=lambda i: vocab[i][1])
    out = {lowest} | ({int(model["unk_id"])} if model.get("unk_id") is not None else set())
    by = {"lowest_score": 1}
    if model.get("byte_fallback"):
        fallback = {i for i, (p, _) in enumerate(vocab) if BYTE_PIECE.fullmatch(p)}
        out |= fallback
        by["byte_fallback"] = len(fallback)
    if keep_chars != "none":
        seen = char_ids(tokenizer, model, texts)
        out |= seen
        by["seen_chars"] = len(seen)
    return out, by


def rewrite_model(model: dict, remap: dict[int, int]) -> None:
    """tokenizer.json's Unigram ``model`` reduced to the kept ids, in place: ``vocab`` (pieces
    and scores in new id order) and ``unk_id``."""
    vocab = model["vocab"]
    # ids are remapped in order, so the kept pieces (old ids below len(vocab)) come first
    model["vocab"] = [vocab[old] for old in sorted(remap) if old < len(vocab)]
    if model.get("unk_id") is not None:
        model["unk_id"] = remap[int(model["unk_id"])]
