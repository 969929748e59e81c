"""Moved to :mod:`compressor.profiling` (the core uses it); this module re-exports it for one
release."""

from compressor.profiling import (DEFAULT_BATCH_SIZES, DEFAULT_SEQ_LENS, REAL_BATCHES,  # noqa: F401
                                  check_seq_lens, profile_targets, real_batches, token_length_stats)
