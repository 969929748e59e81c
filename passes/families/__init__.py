"""Model families: one adapter per family (:class:`passes.families.base.Family`), listed by
``config.model_type`` in ``passes.FAMILIES`` and looked up through :mod:`compressor.registry`.

No pass names a module path of a family: it asks :func:`family_of` for layers, roles, slicing and
stand-ins (``tests/test_architecture.py`` checks that)."""

from compressor.registry import family_of

__all__ = ["family_of"]
