"""Recovery distillation: the ``distill`` pass (:mod:`passes.distill.distill`) and the extra
in-domain text it may soft-label (:mod:`passes.distill.augment`). The losses it shares with the
other methods live in :mod:`passes._distill`."""
