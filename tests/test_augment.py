"""passes.distill.augment: seeded, deterministic perturbed copies (rates respected, the tokenizer's mask
token used) and reading unlabelled text."""

from __future__ import annotations

import json
import random

import pytest

from compressor.data import Example
from compressor.errors import ConfigError, DataError
from passes.distill.augment import augment, perturb, read_unlabeled

WORDS = "the a film plot actor scene story music ending script camera light".split()


def _examples(n=200, seed=0, pair=False):
    rng = random.Random(seed)
    return [Example(" ".join(f"{rng.choice(WORDS)}{i}_{j}" for j in range(12)), i % 2,
                    "second part here" if pair else None, group=f"g{i % 5}") for i in range(n)]


def test_same_seed_same_output_other_seed_other_output():
    rows = _examples(50)
    a, b = augment(rows, 3, seed=1), augment(rows, 3, seed=1)
    assert a == b and len(a) == 150
    assert augment(rows, 3, seed=2) != a
    # copies of one example do not depend on the others or on their order
    assert augment(rows[10:11], 3, seed=1) == a[30:33]
    assert augment(rows[::-1], 3, seed=1)[-33:-30] == a[30:33]


def test_labels_groups_and_no_copies_of_the_original():
    rows = _examples(50, pair=True)
    out = augment(rows, 2, seed=0)
    assert all(e.label == -1 for e in out)
    assert [e.group for e in out] == [e.group for e in rows for _ in range(2)]
    for k, e in enumerate(out):
        src = rows[k // 2]
        assert (e.text, e.text_pair) != (src.text, src.text_pair) and e.text_pair is not None
    assert len({(e.text, e.text_pair) for e in out}) == len(out)


@pytest.mark.parametrize("p_drop, p_swap, p_mask", [(0.1, 0.0, 0.0), (0.0, 0.0, 0.2), (0.3, 0.0, 0.1)])
def test_drop_and_mask_rates_respected(p_drop, p_swap, p_mask):
    rows = _examples(300)
    out = augment(rows, 2, seed=0, mask_token="[MASK]", p_drop=p_drop, p_swap=p_swap, p_mask=p_mask,
                  distinct=False)
    n_words = 2 * sum(len(e.text.split()) for e in rows)
    masked = sum(e.text.split().count("[MASK]") for e in out)
    kept = sum(len(e.text.split()) for e in out)
    assert abs(masked / n_words - p_mask) < 0.02
    assert abs(1 - kept / n_words - p_drop) < 0.02
    if p_mask == 0:
        assert masked == 0


def test_swap_rate_and_swaps_are_adjacent():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(20)]
    moved = 0
    for _ in range(500):
        out = perturb(" ".join(words), rng, None, 0.0, 0.2, 0.0).split()
        assert sorted(out) == sorted(words)
        assert all(abs(int(w[1:]) - i) <= 1 for i, w in enumerate(out))
        moved += sum(w != o for w, o in zip(words, out))
    # each of the 19 positions starts a swap with p=0.2 unless its left neighbour just swapped:
    # ~0.2 / (1 + 0.2) swaps per position -> ~2 * 19 * 0.167 = 6.3 moved words per sentence
    assert 5.0 < moved / 500 < 7.5


def test_mask_token_is_the_one_given(tokenizer):
    out = augment(_examples(20), 1, seed=0, mask_token=tokenizer.mask_token, p_drop=0, p_swap=0, p_mask=0.5)
    assert tokenizer.mask_token == "[MASK]"
    assert sum(e.text.split().count(tokenizer.mask_token) for e in out) > 50
    ids = tokenizer(out[0].text)["input_ids"]
    assert tokenizer.mask_token_id in ids
    custom = augment(_examples(20), 1, seed=0, mask_token="<mask>", p_drop=0, p_swap=0, p_mask=0.5)
    assert "<mask>" in custom[0].text.split() and "[MASK]" not in custom[0].text


def test_distinct_copies_rates_conditioned_on_a_change():
    rows = _examples(300)
    out = augment(rows, 2, seed=0, p_drop=0.1, p_swap=0, p_mask=0)
    assert len(out) == 600 and not {e.text for e in out} & {e.text for e in rows}
    dropped = 1 - sum(len(e.text.split()) for e in out) / (2 * 12 * 300)
    assert 0.12 < dropped < 0.16  # 0.1 / (1 - 0.9**12) = 0.139
    same = augment(rows, 2, seed=0, p_drop=0.1, p_swap=0, p_mask=0, distinct=False)
    assert sum(e.text in {r.text for r in rows} for e in same) > 100  # ~28% unchanged


def test_one_word_texts_and_at_least_one_word_kept():
    out = augment([Example("word", 1)], 3, seed=0, p_drop=0.9, p_swap=0, p_mask=0.1)
    assert [e.text for e in out] == ["[MASK]"]  # the only other variant; never an empty text
    out = augment([Example("two words", 1)], 50, seed=0, p_drop=0.9, p_swap=0.5, p_mask=0.05, distinct=False)
    assert all(e.text.split() for e in out)
    assert augment([], 3) == [] and augment(_examples(3), 0) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_drop=1.5), r"p_drop=1.5 is out of range"),
    (dict(p_swap=-0.1), r"p_swap=-0.1 is out of range"),
    (dict(p_drop=0.6, p_mask=0.6), r"sum to at most 1"),
    (dict(p_drop=0, p_swap=0, p_mask=0), "changes nothing"),
    (dict(mask_token=None), "needs a mask token"),
    (dict(n_per_example=-1), "n_per_example=-1"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        augment(_examples(3), **kwargs)


# --- unlabelled text -------------------------------------------------------------------------

def test_read_unlabeled_txt(tmp_path):
    f = tmp_path / "extra.txt"
    f.write_text("a  fine film\n\nthe eval text\na fine film\nanother one\n", encoding="utf-8")
    out = read_unlabeled(f, exclude=[Example("the eval text", 1)])
    assert out == [Example("a fine film", -1), Example("another one", -1)]
    assert read_unlabeled(f, limit=1) == [Example("a fine film", -1)]
    plain = tmp_path / "noext"
    plain.write_text("x\n", encoding="utf-8")
    assert read_unlabeled(plain) == [Example("x", -1)]


def test_read_unlabeled_tables(tmp_path):
    tsv = tmp_path / "u.tsv"
    tsv.write_text("id\tsentence\tlabel\n1\tgood\t1\n2\tbad\t\n", encoding="utf-8")
    assert read_unlabeled(tsv) == [Example("good", -1), Example("bad", -1)]
    csv = tmp_path / "u.csv"
    csv.write_text("body,other\nnice one,x\n", encoding="utf-8")
    assert read_unlabeled(csv, text_column="Body") == [Example("nice one", -1)]
    jl = tmp_path / "u.jsonl"
    jl.write_text("\n".join(json.dumps({"premise": f"p{i}", "hypothesis": f"h{i}"}) for i in range(3)),
                  encoding="utf-8")
    assert read_unlabeled(jl)[2] == Example("p2", -1, "h2")


def test_read_unlabeled_errors(tmp_path):
    with pytest.raises(DataError, match="missing.txt.*not found"):
        read_unlabeled(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt.*no texts"):
        read_unlabeled(empty)
    with pytest.raises(DataError, match=r"'.parquet'.*allowed .txt"):
        read_unlabeled(tmp_path / "x.parquet")
    csv = tmp_path / "u.csv"
    csv.write_text("body\nx\n", encoding="utf-8")
    with pytest.raises(DataError, match="u.csv.*no text column"):
        read_unlabeled(csv)
    with pytest.raises(DataError, match="u.csv.*no column 'text'"):
        read_unlabeled(csv, text_column="text")
