"""vocab-prune's tokenizer side: read extra texts, count the tokens texts use, find the
tokenizer's kind and rewrite its files to a kept subset of token ids.

Ids are remapped in order: the kept old ids, sorted, become ``0..k-1`` (so [PAD]=0 stays 0).
Kinds: WordPiece (BERT, ELECTRA, DistilBERT), BPE (RoBERTa, ModernBERT: :mod:`.bpe`) and
Unigram (XLM-R, CamemBERT, DeBERTa-v3: :mod:`.unigram`), read from tokenizer.json's
``model.type``. Works on transformers 4.57 (fast tokenizers with tokenizer.json plus the slow
tokenizer's vocab.txt or vocab.json + merges.txt, or slow BERT / GPT-2 style tokenizers) and 5.x
(one tokenizers-backed class, tokenizer.json only): whatever files ``save_pretrained`` writes
are rewritten, then the same class loads them back. The comparisons of old and new splits live
in :mod:`.compare`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from compressor.errors import ConfigError, DataError
from compressor.onnx_utils import VerificationError
from passes.vocab import bpe as vbpe
from passes.vocab import unigram as vuni

log = logging.getLogger(__name__)

TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                 "unk_token_id", "mask_token_id", "decoder_start_token_id")

TEXT_FILE_EXTENSIONS = ("", ".txt", ".text")

KINDS = ("WordPiece", "BPE", "Unigram")
SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spm.model", "spiece.model", "tokenizer.model")


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


def _refuse(kind) -> ConfigError:
    return ConfigError(f"vocab-prune supports WordPiece (BERT, ELECTRA, DistilBERT), BPE (RoBERTa, "
                       f"ModernBERT) and Unigram (XLM-R, CamemBERT, DeBERTa-v3) tokenizers: this one's "
                       f"model is {kind!r}")


def tokenizer_data(tokenizer) -> dict | None:
    """The fast tokenizer's tokenizer.json as a dict (None for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def tokenizer_kind(tokenizer, data: dict | None = None) -> str:
    """WordPiece, BPE or Unigram (tokenizer.json's ``model.type``; a slow tokenizer's by its
    class). ConfigError, one line naming the kind and the supported ones, for anything else."""
    data = tokenizer_data(tokenizer) if data is None else data
    if data is not None:
        kind = (data.get("model") or {}).get("type")
    elif hasattr(tokenizer, "wordpiece_tokenizer"):
        kind = "WordPiece"
    elif hasattr(tokenizer, "bpe_ranks") and hasattr(tokenizer, "encoder"):
        kind = "BPE"
    elif hasattr(tokenizer, "sp_model"):
        raise ConfigError(f"vocab-prune rewrites SentencePiece tokenizers through tokenizer.json: load "
                          f"the fast tokenizer, not the slow {type(tokenizer).__name__}")
    else:
        kind = type(tokenizer).__name__
    if kind not in KINDS:
        raise _refuse(kind)
    return kind


def model_data(tokenizer, data: dict | None) -> dict:
    """The tokenizer's model (tokenizer.json's ``model`` dict; a slow BPE tokenizer's built)."""
    return data["model"] if data is not None else vbpe.slow_model(tokenizer)


def structural_ids(tokenizer, kind: str, data: dict | None, keep: set[int], keep_chars: str,
                   texts: list[str]) -> tuple[set[int], dict]:
    """Ids that must stay beside ``keep`` for the kind's splits to hold (none for WordPiece):
    see :func:`passes.vocab.bpe.structural_ids` and :func:`passes.vocab.unigram.structural_ids`."""
    if kind == "BPE":
        return vbpe.structural_ids(model_data(tokenizer, data), vbpe.is_byte_level(data, tokenizer), keep)
    if kind == "Unigram":
        return vuni.structural_ids(tokenizer, data["model"], keep_chars, texts)
    return set(), {}


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


def _rewrite_tokenizer_json(path: Path, keep_tokens: dict[str, int], remap: dict[int, int]) -> dict:
    """Rewrite tokenizer.json to the kept ids; returns its new ``model`` dict."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    kind = model.get("type")
    if kind == "WordPiece":
        model["vocab"] = {tok: remap[i] for tok, i in model["vocab"].items() if i in remap}
    elif kind == "BPE":
        vbpe.rewrite_model(model, remap)
    elif kind == "Unigram":
        vuni.rewrite_model(model, remap)
    else:
        raise _refuse(kind)
    data["added_tokens"] = [dict(a, id=remap[a["id"]]) for a in data.get("added_tokens") or []
                            if a["id"] in remap]
    _remap_processor(data.get("post_processor"), remap)
    padding = data.get("padding")
    if isinstance(padding, dict) and padding.get("pad_id") in remap:
        padding["pad_id"] = remap[padding["pad_id"]]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return model


def pruned_tokenizer(tokenizer, keep: list[int], folder: Path):
    """``tokenizer`` reduced to the tokens ``keep`` (sorted old ids), saved into ``folder`` and
    loaded back with the same class. ConfigError for a kind other than WordPiece, BPE, Unigram.
    A SentencePiece model file saved beside tokenizer.json is removed (it would give the old
    ids to a slow tokenizer): the folder is for the fast tokenizer."""
    folder = Path(folder)
    remap = {old: new for new, old in enumerate(keep)}
    tokenizer.save_pretrained(str(folder))
    tokens = tokenizer.convert_ids_to_tokens(keep)
    files = {p.name for p in folder.iterdir()}
    if "tokenizer.json" not in files and "vocab.txt" not in files and "vocab.json" not in files:
        raise ConfigError(f"vocab-prune rewrites tokenizer.json, vocab.txt or vocab.json + merges.txt; "
                          f"{type(tokenizer).__name__} saved {', '.join(sorted(files))}")
    model = {}
    if "tokenizer.json" in files:
        model = _rewrite_tokenizer_json(folder / "tokenizer.json", dict(zip(tokens, keep)), remap)
    if "vocab.txt" in files:
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if "vocab.json" in files:
        vbpe.rewrite_slow_files(folder, remap)
    for name in SENTENCEPIECE_FILES:
        if name in files and "tokenizer.json" in files:
            (folder / name).unlink()
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
    if model.get("type") == "Unigram":  # transformers 5's XLM-R class rebuilds the model with unk_id=3
        loaded = json.loads(new.backend_tokenizer.to_str())["model"].get("unk_id")
        if loaded != model.get("unk_id"):
            raise VerificationError(f"{type(new).__name__} reloads the pruned Unigram tokenizer with "
                                    f"unk_id={loaded}, not {model.get('unk_id')}")
    return new
