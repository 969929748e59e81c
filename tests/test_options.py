"""The training options the training passes share (``passes._options``): one declaration, one
check naming the pass, one mapping onto ``passes._train.train``'s keywords."""

from __future__ import annotations

import dataclasses

import pytest

from compressor.errors import ConfigError
from compressor.registry import get_pass
from passes._options import BasicTrainingOptions, TrainingOptions
from passes._train import TrainOptions

# pass -> its defaults of epochs, lr, batch_size, max_length, warmup, weight_decay, max_train
# (None: the pass has no such option)
DEFAULTS = {
    "finetune": (2, 5e-5, 32, 64, 0.1, 0.01, 0),
    "distill": (2, 5e-5, 32, 64, 0.1, 0.01, 0),
    "magnitude": (2, 5e-5, 32, 64, 0.1, 0.01, 0),
    "nip": (3, 3e-5, 32, 64, 0.1, 0.01, 0),
    "rpp": (3, 3e-5, 32, 64, 0.1, 0.01, 0),
    "sparsebert": (3, 3e-5, 32, 64, 0.1, 0.01, 0),
    "cap": (3, 3e-5, 32, 64, 0.1, 0.0, 0),
    "nm-prune": (0, 2e-5, 32, 64, None, None, 0),
}
KEYS = ("epochs", "lr", "batch_size", "max_length", "warmup", "weight_decay", "max_train")


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_training_pass_keeps_its_defaults(name):
    cls = get_pass(name)
    assert issubclass(cls, BasicTrainingOptions)
    assert issubclass(cls, TrainingOptions) == (name != "nm-prune")  # nm-prune: train's warm-up and decay
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert tuple(defaults.get(k) for k in KEYS) == DEFAULTS[name]
    assert all(o["help"] for o in cls.options())


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_train_kwargs_are_train_keywords(name):
    p = get_pass(name)(epochs=1, lr=1e-4, batch_size=8, max_length=16)
    kwargs = p.train_kwargs()
    assert set(kwargs) <= {f.name for f in dataclasses.fields(TrainOptions)}
    assert {k: kwargs[k] for k in ("epochs", "lr", "batch_size", "max_length")} == \
        {"epochs": 1, "lr": 1e-4, "batch_size": 8, "max_length": 16}
    assert p.train_kwargs(epochs=5)["epochs"] == 5  # a computed epoch count wins
    if isinstance(p, TrainingOptions) and name != "sparsebert":
        assert (kwargs["warmup_ratio"], kwargs["weight_decay"]) == (p.warmup, p.weight_decay)
    if name == "nm-prune":  # no warm-up or weight-decay options: train's defaults apply
        assert "warmup_ratio" not in kwargs and "weight_decay" not in kwargs


def test_sparsebert_constant_lr_has_no_warmup():
    cls = get_pass("sparsebert")
    constant = cls(warmup=0.3).train_kwargs()
    assert (constant["warmup_ratio"], constant["lr_schedule"]) == (0.0, "constant")
    linear = cls(warmup=0.3, constant_lr=False).train_kwargs()
    assert (linear["warmup_ratio"], linear["lr_schedule"]) == (0.3, "linear")


@pytest.mark.parametrize("name", sorted(DEFAULTS))
@pytest.mark.parametrize("key,value", [("lr", 0.0), ("batch_size", 0), ("max_length", 4),
                                       ("max_train", -1), ("epochs", -1), ("warmup", 1.5),
                                       ("weight_decay", -0.1)])
def test_bad_training_option_names_the_pass(name, key, value):
    cls = get_pass(name)
    if key not in {f.name for f in dataclasses.fields(cls)}:
        return
    with pytest.raises(ConfigError, match=rf"^{name}\.{key}={value!r} is out of range"):
        cls(**{key: value})


@pytest.mark.parametrize("name,zero_ok", [(n, n in ("magnitude", "nm-prune")) for n in sorted(DEFAULTS)])
def test_epochs_zero_only_where_the_pass_only_prunes(name, zero_ok):
    cls = get_pass(name)
    kwargs = {"epochs": 0, **({"schedule": "oneshot"} if name == "magnitude" else {})}
    if zero_ok:
        assert cls(**kwargs).epochs == 0
    else:
        with pytest.raises(ConfigError, match=rf"{name}\.epochs=0 is out of range"):
            cls(**kwargs)


def test_cap_keeps_its_wider_ranges():
    cap = get_pass("cap")
    assert cap(lr=2.0, batch_size=100_000, epochs=2000).lr == 2.0
    with pytest.raises(ConfigError, match=r"^nip\.lr=2\.0 is out of range"):
        get_pass("nip")(lr=2.0)
