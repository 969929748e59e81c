"""vocab-prune's tokenizer side: read extra texts, count the tokens texts use, rewrite a WordPiece
tokenizer's files to a kept subset of token ids, and compare how the old and the new tokenizer
split words.

Ids are remapped in order: the kept old ids, sorted, become ``0..k-1`` (so [PAD]=0 stays 0).
Works on transformers 4.57 (fast ``BertTokenizerFast`` with tokenizer.json + vocab.txt, or slow
``BertTokenizer`` with vocab.txt) and 5.x (one tokenizers-backed class, tokenizer.json only):
whatever files ``save_pretrained`` writes are rewritten, then the same class loads them back.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from compressor.errors import ConfigError, DataError
from compressor.onnx_utils import VerificationError

log = logging.getLogger(__name__)

TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                 "unk_token_id", "mask_token_id", "decoder_start_token_id")

TEXT_FILE_EXTENSIONS = ("", ".txt", ".text")


# -- texts ---------------------------------------------------------------------------------------
def read_texts(path: str | Path) -> list[str]:
    """Texts of a file: one per line (.txt or no extension), or the text column(s) of a
    TSV/CSV/JSONL/JSON file (compressor.data's column names; a one-column file's only column).
    DataError for a missing or empty file or one without a text column."""
    from compressor.data import PAIR_COLUMNS, TEXT_COLUMNS, read_rows

    path = Path(path)
    if not path.is_file():
        raise DataError(f"vocab_texts file {str(path)!r} not found")
    if path.suffix.lower() in TEXT_FILE_EXTENSIONS:
        texts = [" ".join(line.split()) for line in path.read_text(encoding="utf-8-sig",
                                                                     errors="replace").splitlines()]
    else:
        columns, rows = read_rows(path)
        cols = set(columns)
        pick = next(([a, b] for a, b in PAIR_COLUMNS if a in cols and b in cols), None)
        pick = pick or next(([c] for c in TEXT_COLUMNS if c in cols), None)
        if pick is None and len(columns) == 1:
            pick = columns
        if pick is None:
            raise DataError(f"vocab_texts file {str(path)!r} has no text column: expected one of "
                            f"{', '.join(TEXT_COLUMNS)}; found {', '.join(columns) or '(none)'}")
        texts = [" ".join(str(row.get(c) or "").split()) for _, row in rows for c in pick]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"vocab_texts file {str(path)!r} has no texts")
    return texts


def example_texts(examples) -> list[str]:
    """Every text and text pair of ``examples`` (compressor.data.Example), in order."""
    out = []
    for e in examples:
        out.append(e.text)
        if e.text_pair is not None:
            out.append(e.text_pair)
    return out


def count_tokens(tokenizer, texts: list[str], batch: int = 1024) -> Counter:
    """How often each token id occurs in the tokenization of ``texts`` (no truncation)."""
    counts: Counter = Counter()
    for start in range(0, len(texts), batch):
        for ids in tokenizer(texts[start:start + batch], add_special_tokens=False,
                             truncation=False)["input_ids"]:
            counts.update(ids)
    return counts


def special_ids(tokenizer, config=None) -> set[int]:
    """Ids of the tokenizer's special tokens (all of its special map, added special tokens)
    and of the ``*_token_id`` entries of ``config``."""
    ids = set(int(i) for i in tokenizer.all_special_ids if i is not None)
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    for key in TOKEN_ID_KEYS:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int) and value >= 0:
            ids.add(value)
    return ids


def char_ids(tokenizer, which: str) -> set[int]:
    """Ids of the single-character pieces ``c`` and ``##c`` (``which``: none, ascii, all)."""
    if which == "none":
        return set()
    out = set()
    for tok, i in tokenizer.get_vocab().items():
        c = tok[2:] if tok.startswith("##") else tok
        if len(c) == 1 and (which == "all" or c.isascii()):
            out.add(int(i))
    return out


# -- tokenizer files -----------------------------------------------------------------------------
def _remap_processor(proc, remap: dict[int, int]) -> None:
    """Remap the special-token ids a tokenizer.json post-processor holds, in place."""
    if not isinstance(proc, dict):
        return
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for spec in proc.get("special_tokens", {}).values():
            spec["ids"] = [remap[i] for i in spec["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if key in proc:
                proc[key] = [proc[key][0], remap[proc[key][1]]]
    elif kind == "Sequence":
        for sub in proc.get("processors", []):
            _remap_processor(sub, remap)


def _rewrite_tokenizer_json(path: Path, keep_tokens: dict[str, int], remap: dict[int, int]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConfigError(f"vocab-prune supports WordPiece tokenizers (BERT family): this one's "
                          f"model is {model.get('type')!r}")
    model["vocab"] = {tok: remap[i] for tok, i in model["vocab"].items() if i in remap}
    data["added_tokens"] = [dict(a, id=remap[a["id"]]) for a in data.get("added_tokens") or []
                            if a["id"] in remap]
    _remap_processor(data.get("post_processor"), remap)
    padding = data.get("padding")
    if isinstance(padding, dict) and padding.get("pad_id") in remap:
        padding["pad_id"] = remap[padding["pad_id"]]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def pruned_tokenizer(tokenizer, keep: list[int], folder: Path):
    """``tokenizer`` reduced to the tokens ``keep`` (sorted old ids), saved into ``folder`` and
    loaded back with the same class. ConfigError for a tokenizer that is not WordPiece."""
    folder = Path(folder)
    remap = {old: new for new, old in enumerate(keep)}
    tokenizer.save_pretrained(str(folder))
    tokens = tokenizer.convert_ids_to_tokens(keep)
    files = {p.name for p in folder.iterdir()}
    if "tokenizer.json" not in files and "vocab.txt" not in files:
        raise ConfigError(f"vocab-prune supports WordPiece tokenizers (vocab.txt or tokenizer.json); "
                          f"{type(tokenizer).__name__} saved {', '.join(sorted(files))}")
    if "tokenizer.json" in files:
        _rewrite_tokenizer_json(folder / "tokenizer.json", dict(zip(tokens, keep)), remap)
    if "vocab.txt" in files:
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(cfg.get("added_tokens_decoder"), dict):
            cfg["added_tokens_decoder"] = {str(remap[int(i)]): v for i, v in cfg["added_tokens_decoder"].items()
                                           if int(i) in remap}
        config_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    new = type(tokenizer).from_pretrained(str(folder), local_files_only=True)
    if len(new) != len(keep):
        raise VerificationError(f"pruned tokenizer has {len(new)} tokens, expected {len(keep)}")
    return new


# -- model ---------------------------------------------------------------------------------------
def words(tokenizer, text: str) -> list[str]:
    """The words (pre-tokens) WordPiece splits: the fast tokenizer's normalizer and
    pre-tokenizer, or the slow BERT tokenizer's basic tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        norm = backend.normalizer.normalize_str(text) if backend.normalizer else text
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(norm)] if backend.pre_tokenizer \
            else norm.split()
    basic = getattr(tokenizer, "basic_tokenizer", None)
    if basic is not None and getattr(tokenizer, "do_basic_tokenize", True):
        return basic.tokenize(text, never_split=tokenizer.all_special_tokens)
    return text.split()


def split_stats(old_tok, new_tok, keep: list[int], texts: list[str]) -> dict:
    """Compare how the old and new tokenizer split the words of ``texts``, token-weighted by the
    old tokenization: ``unk_fraction`` (tokens in words that now become [UNK]),
    ``changed_split_fraction`` (tokens in words split differently, not [UNK]),
    ``words_changed_fraction``, ``texts_changed_fraction`` and ``tokens``."""
    remap = {old: new for new, old in enumerate(keep)}
    per_text = [words(old_tok, t) for t in texts]
    counts = Counter(w for ws in per_text for w in ws)
    vocab = list(counts)
    if not vocab:
        return {"tokens": 0, "unk_fraction": 0.0, "changed_split_fraction": 0.0,
                "words_changed_fraction": 0.0, "texts_changed_fraction": 0.0}
    old_ids = old_tok(vocab, add_special_tokens=False)["input_ids"]
    new_ids = new_tok(vocab, add_special_tokens=False)["input_ids"]
    unk_old, unk_new = old_tok.unk_token_id, new_tok.unk_token_id
    status, tokens, unk, changed, words_changed = {}, 0, 0, 0, 0
    for w, o, n in zip(vocab, old_ids, new_ids):
        same = [remap.get(i, -1) for i in o] == list(n)
        became_unk = not same and n == [unk_new] and o != [unk_old]
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


def verify_remapped(old_tok, new_tok, keep: list[int], examples, batch: int = 512) -> dict:
    """Tokenize every example (text and pair, special tokens, no truncation) with both
    tokenizers. Where every old id is kept, the new ids must be exactly the old ids remapped:
    otherwise VerificationError naming the text. Returns ``{"texts_checked", "texts_with_dropped"}``."""
    remap = {old: new for new, old in enumerate(keep)}
    examples = list(examples)
    groups = [[e for e in examples if e.text_pair is None], [e for e in examples if e.text_pair is not None]]
    checked = dropped = 0
    for group in groups:
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            args = ([e.text for e in chunk],) + (([e.text_pair for e in chunk],) if chunk[0].text_pair else ())
            old = old_tok(*args, truncation=False)["input_ids"]
            new = new_tok(*args, truncation=False)["input_ids"]
            for e, o, n in zip(chunk, old, new):
                mapped = [remap.get(i, -1) for i in o]
                if -1 in mapped:
                    dropped += 1
                    continue
                checked += 1
                if mapped != list(n):
                    raise VerificationError(f"pruned tokenizer splits {e.text[:80]!r} differently: old ids "
                                            f"remapped {mapped[:16]}..., new {list(n)[:16]}...")
    return {"texts_checked": checked, "texts_with_dropped": dropped}
