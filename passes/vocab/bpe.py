"""vocab-prune for BPE tokenizers (byte-level: RoBERTa, ModernBERT, GPT-2 style): which tokens
must stay beside the used ones, and the kept vocabulary and merges.

How BPE splits a word (``tokenizers``' ``BPE`` model, as the slow GPT-2 tokenizer): the word's
characters (in the byte-level alphabet: every byte has a symbol) are the initial symbols; then,
again and again, the adjacent pair with the lowest merge rank (leftmost on a tie) is replaced by
its merge result, until no pair has a merge. Removing tokens removes the merges that name them
(a merge stays only when its two parts and its result stay: ``tokenizers`` refuses anything
else), and removing a merge can change a word's split even when the word's final tokens stay:
an intermediate token on their derivation path was dropped, the merge that makes it is gone, and
the word ends in other pieces.

What stays, so that every word whose old tokens are all kept splits exactly as before:

- the byte alphabet (all 256 byte-level symbols): every text still encodes, nothing is unknown;
- the *derivation* of every kept token: the merges BPE applies to the token's own characters
  (and their intermediate results). In a word, the merges inside one final token's span never
  involve a symbol outside it (they would cross the token's border), and at each step the merge
  taken is the lowest-ranked one, also among the span's own pairs; so the merges inside the span
  are exactly those BPE applies to the token alone. With every merge a word used kept, BPE on
  the reduced merges takes the same merge at every step (it is still available and still the
  lowest-ranked: the reduced merges are a subset of the old ones), so the word splits as before.

The pass checks the promise on every training text with the real tokenizers anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import pre_tokenizers


def parse_merges(merges) -> list[tuple[str, str]]:
    """tokenizer.json's merges, written ``"a b"`` (tokenizers < 0.20) or ``["a", "b"]``."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges or []]


def is_byte_level(data: dict | None, tokenizer=None) -> bool:
    """Whether the tokenizer.json (or a slow GPT-2 style tokenizer) maps text to byte symbols."""
    if data is None:
        return hasattr(tokenizer, "byte_encoder")

    def has(node) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has(sub) for key in ("pretokenizers", "decoders") for sub in node.get(key) or [])

    return has(data.get("pre_tokenizer")) or has(data.get("decoder"))


class BpeModel:
    """The merges of a BPE model (tokenizer.json's ``model`` dict) and a replay of its splits."""

    def __init__(self, model: dict):
        self.vocab: dict[str, int] = model["vocab"]
        self.prefix = model.get("continuing_subword_prefix") or ""
        self.suffix = model.get("end_of_word_suffix") or ""
        self.pairs = parse_merges(model.get("merges"))
        self.ranks: dict[tuple[str, str], tuple[int, str]] = {}
        for rank, (a, b) in enumerate(self.pairs):
            self.ranks[(a, b)] = (rank, self.result(a, b))  # a later duplicate wins, as in tokenizers

    def result(self, a: str, b: str) -> str:
        return a + b[len(self.prefix):] if self.prefix else a + b

    def symbols(self, token: str) -> list[str] | None:
        """The initial symbols BPE starts from for ``token`` alone (a continuation piece starts
        with the continuing-subword prefix, a word end carries the end-of-word suffix); None
        where one is not in the vocabulary."""
        body, inside = token, False
        if self.prefix and token.startswith(self.prefix) and len(token) > len(self.prefix):
            body, inside = token[len(self.prefix):], True
        end = bool(self.suffix) and body.endswith(self.suffix) and len(body) > len(self.suffix)
        if end:
            body = body[:-len(self.suffix)]
        out = [(self.prefix if self.prefix and (i or inside) else "") + c for i, c in enumerate(body)]
        if end and out:
            out[-1] += self.suffix
        return out if out and all(s in self.vocab for s in out) else None

    def derivation(self, token: str) -> list[tuple[str, str]] | None:
        """The merges BPE applies to ``token``'s own symbols, in order, when they end in the one
        symbol ``token``; None otherwise (a special token, a piece BPE never builds)."""
        syms = self.symbols(token)
        if syms is None:
            return None
        applied = []
        while len(syms) > 1:
            best = None
            for i in range(len(syms) - 1):
                hit = self.ranks.get((syms[i], syms[i + 1]))
                if hit is not None and (best is None or hit[0] < best[0]):
                    best = (hit[0], i, hit[1])
            if best is None:
                break
            _, i, merged = best
            applied.append((syms[i], syms[i + 1]))
            syms[i:i + 2] = [merged]
        return applied if syms == [token] else None

    def closure(self, tokens: set[str]) -> set[str]:
        """``tokens`` plus the parts and results of every merge on their derivations."""
        out = set(tokens)
        for token in tokens:
            for a, b in self.derivation(token) or ():
                out.update((a, b, self.result(a, b)))
        return out

    def kept_merges(self, kept: set[str]) -> list[int]:
        """Indexes of the merges whose parts and result are all kept, in rank order."""
        return [r for r, (a, b) in enumerate(self.pairs)
                if a in kept and b in kept and self.result(a, b) in kept]


def structural_ids(model: dict, byte_level: bool, keep: set[int]) -> tuple[set[int], dict]:
    """Ids that must stay beside ``keep`` (old ids): the byte alphabet of a byte-level model and
    the derivation closure of every kept token. Returns the ids and their counts by reason."""
    bpe = BpeModel(model)
    id_to_token = {i: t for t, i in bpe.vocab.items()}
    alphabet = {bpe.vocab[c] for c in pre_tokenizers.ByteLevel.alphabet() if c in bpe.vocab} \
        if byte_level else set()
    tokens = {id_to_token[i] for i in keep | alphabet if i in id_to_token}
    closure = {bpe.vocab[t] for t in bpe.closure(tokens)}
    return alphabet | closure, {"byte_alphabet": len(alphabet - keep),
                                "merge_paths": len(closure - keep - alphabet)}


def rewrite_model(model: dict, remap: dict[int, int]) -> None:
    """tokenizer.json's BPE ``model`` reduced to the kept ids, in place: vocabulary with the new
    ids and the merges whose parts and result stay, in their old order and format."""
    bpe = BpeModel(model)
    vocab = {t: remap[i] for t, i in model["vocab"].items() if i in remap}
    merges = model.get("merges") or []
    model["merges"] = [merges[r] for r in bpe.kept_merges(set(vocab))]
    model["vocab"] = vocab


def rewrite_slow_files(folder: Path, remap: dict[int, int]) -> None:
    """The slow tokenizer's vocab.json and merges.txt (GPT-2 / RoBERTa), if saved, in place."""
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not vocab_file.is_file():
        return
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    kept = {t: remap[i] for t, i in vocab.items() if i in remap}
    vocab_file.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
    if not merges_file.is_file():
        return
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    head = [ln for ln in lines[:1] if ln.startswith("#version")]
    pairs = [ln for ln in lines[len(head):] if ln.strip()]
    bpe = BpeModel({"vocab": vocab, "merges": pairs})
    merges_file.write_text("".join(ln + "\n" for ln in head + [pairs[r] for r in bpe.kept_merges(set(kept))]),
                           encoding="utf-8")


def slow_model(tokenizer) -> dict:
    """A slow GPT-2 style tokenizer's vocabulary and merges as tokenizer.json's model dict."""
    ranks = sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])
    return {"type": "BPE", "vocab": dict(tokenizer.encoder), "merges": [list(p) for p, _ in ranks]}
