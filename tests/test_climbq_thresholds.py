"""The `paper`-mode threshold benchmark: it runs, and on a random model it shows the documented mismatch."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from climbq_thresholds import _batches, _model, label_dependence, measure  # noqa: E402


def test_training_edges_are_wider_than_the_test_edge_on_a_random_model() -> None:
    args = SimpleNamespace(root=None, batch_size=32, batches=1, seed=0, ratio=50)
    batches, counts = _batches(args)
    model, mode = _model(None, bits=2)
    assert mode == "paper"
    result = measure(model, batches, counts, bits=2)
    rows = result["rows"]
    assert len(rows) == 21  # option-B ResNet-20: stem + 18 block BNs + 2 shortcut BNs
    assert abs(result["edge"] - 0.967) < 1e-3
    edges = [row["train_edge"][0] for row in rows.values()]
    assert 1.5 < statistics.mean(edges) < 2.0  # c_k ~ 1.8 times sigma_k ~ 1 (SPEC: ~+-1.8 against ~+-0.97)
    for row in rows.values():  # wider edges put fewer values in the outer levels than Phi(x) does
        assert row["outer_train"][0] < row["outer_test"][0] and row["differ"][0] > 0.1
    accuracy = label_dependence(model, batches, counts)
    assert set(accuracy) == {"test rule", "training rule, true labels", "training rule, shuffled labels"}
    assert all(0 <= value <= 1 for value in accuracy.values())
