"""compressor.metrics: majority-class accuracy, gap closed and collapse detection (pure python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compressor.data import Example
from compressor.metrics import collapse, gap_closed, is_collapse, majority_accuracy, prediction_share


def test_majority_accuracy_examples_and_ints():
    rows = [Example("a", 1), Example("b", 1), Example("c", 0), Example("d", 1)]
    assert majority_accuracy(rows) == 0.75
    assert majority_accuracy([e.label for e in rows]) == 0.75
    assert majority_accuracy(rows, label=0) == 0.25
    assert majority_accuracy([2, 2, 0, 1, 2]) == 0.6
    assert majority_accuracy([]) == 0.0


def test_gap_closed():
    assert gap_closed(0.85, 0.85, 0.63) == pytest.approx(1.0)
    assert gap_closed(0.63, 0.85, 0.63) == pytest.approx(0.0)
    assert gap_closed(0.74, 0.85, 0.63) == pytest.approx(0.5)
    assert gap_closed(0.60, 0.85, 0.63) < 0
    assert gap_closed(0.90, 0.85, 0.63) > 1
    assert gap_closed(0.7, 0.6, 0.6) is None and gap_closed(0.7, 0.5, 0.6) is None


def test_collapse_by_accuracy():
    assert collapse(0.635, 0.63) is not None and "majority" in collapse(0.635, 0.63)
    assert collapse(0.60, 0.63) is not None  # below the majority class is no result either
    assert collapse(0.64, 0.63) is not None  # exactly 1 point above
    assert collapse(0.65, 0.63) is None
    assert collapse(0.65, 0.63, within=0.03) is not None
    assert is_collapse(0.63, 0.63) and not is_collapse(0.80, 0.63)


def test_collapse_by_predictions():
    ones = [1] * 98 + [0] * 2
    assert prediction_share(ones) == (1, 0.98)
    assert prediction_share([]) == (None, 0.0)
    reason = collapse(0.70, 0.55, predictions=ones)
    assert reason is not None and "class 1" in reason and "98.0%" in reason
    assert collapse(0.70, 0.55, predictions=[1] * 97 + [0] * 3) is None  # 97% is not more than 97%
    assert collapse(0.70, 0.55, predictions=[1] * 60 + [0] * 40) is None
    assert collapse(0.70, 0.55, predictions=ones, max_share=0.99) is None


def test_metrics_imports_no_torch():
    code = "import sys, compressor.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
