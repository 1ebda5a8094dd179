"""Loss aggregation on hand-made arrays: token weighting, masking, buckets, means beyond k, JSON round trip."""

import numpy as np
import pytest

from megadoc.errors import MegadocError
from megadoc.evaluation.metrics import LossAccumulator, load_curve, save_curve


def test_token_weighted_mean_and_buckets():
    acc = LossAccumulator(seq_length=4)
    acc.add([[4.0, 3.0, 2.0, 1.0]], [[0, 1, 2, 3]])
    acc.add([[4.0, 2.0, 9.0]], [[0, 1, 2]], mask=[[1, 1, 0]])  # a short window; its last token is padding
    assert acc.tokens == 6
    assert acc.mean() == pytest.approx(16.0 / 6)  # per token, not per window
    curve = acc.curve(bucket_size=2, beyond=(2, 3))
    assert curve.bucket_starts == [0, 2]
    assert curve.tokens == [4, 2]
    assert curve.loss == pytest.approx([13.0 / 4, 1.5])
    assert curve.mean_beyond == pytest.approx({2: 1.5, 3: 1.0})


def test_batches_in_any_order_give_the_same_curve():
    rng = np.random.default_rng(0)
    losses, positions = rng.random((6, 8)), np.tile(np.arange(8), (6, 1))
    whole, parts = LossAccumulator(8), LossAccumulator(8)
    whole.add(losses, positions)
    for index in (3, 0, 5, 1, 4, 2):
        parts.add(losses[index], positions[index])
    assert parts.curve(3).loss == pytest.approx(whole.curve(3).loss)
    assert whole.curve(3).tokens == [18, 18, 12]  # the last bucket is short


def test_empty_buckets_and_bad_input():
    acc = LossAccumulator(4)
    acc.add([1.0], [0])
    curve = acc.curve(2, beyond=(2,))
    assert curve.loss == [1.0, None] and curve.mean_beyond == {2: None}
    with pytest.raises(MegadocError, match="outside 0..3"):
        acc.add([1.0], [4])
    with pytest.raises(MegadocError, match="differ in size"):
        acc.add([1.0, 2.0], [0])
    with pytest.raises(MegadocError, match="no token"):
        LossAccumulator(4).mean()


def test_curve_json_round_trips(tmp_path):
    acc = LossAccumulator(8)
    acc.add(np.linspace(3, 2, 8), np.arange(8))
    curve = acc.curve(4, beyond=(4,))
    save_curve(curve, tmp_path / "curve.json")
    assert load_curve(tmp_path / "curve.json") == curve


def test_bucket_standard_error_over_windows(tmp_path):
    """Kept per window, each bucket gets the standard error of the windows' bucket means (added in any order)."""
    rng = np.random.default_rng(1)
    losses = rng.random((5, 8)) * 4
    acc = LossAccumulator(8, windows=5)
    for window in (4, 1, 3, 0, 2):
        acc.add(losses[window], np.arange(8), window_ids=np.full(8, window))
    curve = acc.curve(4)
    bucket_means = losses.reshape(5, 2, 4).mean(axis=2)
    assert curve.stderr == pytest.approx(list(bucket_means.std(axis=0, ddof=1) / np.sqrt(5)))
    assert curve.windows == 5 and curve.tokens == [20, 20]
    save_curve(curve, tmp_path / "curve.json")
    assert load_curve(tmp_path / "curve.json") == curve
