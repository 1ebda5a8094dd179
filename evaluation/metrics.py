"""Loss aggregation for `megadoc eval`: token-weighted mean loss and loss by token position, from per-token losses.

The evaluator streams batches of per-token cross-entropy (with each token's position in its seq_length window and
a mask for padding / ignored tokens) into a `LossAccumulator`; sums and counts per position are kept, so batches can
be added in any order and the result is exactly the token-weighted mean, whatever the batch sizes.

Loss by position is averaged in buckets of `bucket_size` positions (single positions are noisy on a few hundred
documents); `mean_beyond[k]` is the mean over positions >= k, the number that says whether a model uses long
context (PAPER.md §5 leaves the paper's exact long-context metric open, so both the curve and these means are kept).
When each window is one document (the long set), the accumulator also keeps every window's losses, so each bucket
gets a standard error over documents: the band that says which wiggles of the curve are noise.
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from megadoc.files import atomic_write
from megadoc.errors import MegadocError


@dataclass(frozen=True)
class PositionCurve:
    """Loss by token position, bucketed, as `megadoc eval` writes it and `megadoc report` plots it."""

    seq_length: int
    """Evaluation window length; positions run 0..seq_length-1."""
    bucket_size: int
    """Positions per bucket; bucket i covers [i * bucket_size, (i + 1) * bucket_size)."""
    loss: list[float | None]
    """Token-weighted mean loss of each bucket (None where a bucket has no token)."""
    tokens: list[int]
    """Tokens counted in each bucket."""
    mean: float
    """Token-weighted mean loss over all positions."""
    mean_beyond: dict[int, float | None]
    """k -> mean loss over positions >= k (None when no token lies there)."""
    stderr: list[float | None] | None = None
    """Standard error of each bucket's loss over the windows (documents) behind it; None: windows not kept."""
    windows: int | None = None
    """Windows (documents) behind the curve, when kept."""

    @property
    def bucket_starts(self) -> list[int]:
        return list(range(0, self.seq_length, self.bucket_size))


class LossAccumulator:
    """Sums of per-token loss and token counts by position, over any number of batches."""

    def __init__(self, seq_length: int, windows: int | None = None):
        if seq_length < 1:
            raise MegadocError(f"seq_length must be >= 1, got {seq_length}")
        self.seq_length = seq_length
        self.loss_sum = np.zeros(seq_length, dtype=np.float64)
        self.count = np.zeros(seq_length, dtype=np.int64)
        self.by_window = None if windows is None else np.zeros((windows, seq_length), dtype=np.float64)
        """With `windows`: every window's per-position loss (for the bucket standard errors)."""

    def add(self, losses, positions, mask=None, window_ids=None) -> None:
        """Add per-token losses at their window positions; tokens where `mask` is false are ignored. With
        per-window storage, `window_ids` says which window each token belongs to."""
        losses = np.asarray(losses, dtype=np.float64).ravel()
        positions = np.asarray(positions).ravel()
        keep = np.ones(losses.shape, bool) if mask is None else np.asarray(mask, bool).ravel()
        if not losses.shape == positions.shape == keep.shape:
            raise MegadocError(f"losses, positions and mask differ in size: {losses.size}, {positions.size}, "
                               f"{keep.size}")
        losses, positions = losses[keep], positions[keep]
        if positions.size and (positions.min() < 0 or positions.max() >= self.seq_length):
            raise MegadocError(f"a token position lies outside 0..{self.seq_length - 1}")
        if not np.isfinite(losses).all():
            raise MegadocError("a per-token loss is not finite")
        self.loss_sum += np.bincount(positions, weights=losses, minlength=self.seq_length)
        self.count += np.bincount(positions, minlength=self.seq_length)
        if self.by_window is not None:
            self.by_window[np.asarray(window_ids).ravel()[keep], positions] = losses

    @property
    def tokens(self) -> int:
        return int(self.count.sum())

    def mean(self) -> float:
        """Token-weighted mean loss (the i.i.d. loss when the windows hold the i.i.d. set)."""
        if not self.tokens:
            raise MegadocError("no token was evaluated")
        return float(self.loss_sum.sum() / self.tokens)

    def curve(self, bucket_size: int, beyond: tuple[int, ...] = ()) -> PositionCurve:
        """The bucketed loss-by-position curve and the means beyond each k in `beyond`."""
        if bucket_size < 1:
            raise MegadocError(f"bucket_size must be >= 1, got {bucket_size}")
        starts = np.arange(0, self.seq_length, bucket_size)
        sums, counts = np.add.reduceat(self.loss_sum, starts), np.add.reduceat(self.count, starts)
        return PositionCurve(
            seq_length=self.seq_length, bucket_size=bucket_size,
            loss=[_ratio(s, c) for s, c in zip(sums, counts)], tokens=counts.tolist(), mean=self.mean(),
            mean_beyond={k: _ratio(self.loss_sum[k:].sum(), self.count[k:].sum()) for k in beyond},
            stderr=None if self.by_window is None else self._stderr(starts),
            windows=None if self.by_window is None else len(self.by_window))

    def _stderr(self, starts: np.ndarray) -> list[float | None]:
        """Each bucket's standard error over windows: the spread of the windows' own bucket means (every window
        covers every position, so the bucket's loss is the mean of those)."""
        widths = np.diff(np.append(starts, self.seq_length))
        means = np.add.reduceat(self.by_window, starts, axis=1) / widths
        n = len(means)
        return [float(column.std(ddof=1) / np.sqrt(n)) if n > 1 else None for column in means.T]


def _ratio(total: float, count: int) -> float | None:
    return float(total / count) if count else None


def save_curve(curve: PositionCurve, path: str | os.PathLike) -> None:
    with atomic_write(path) as handle:
        handle.write(orjson.dumps(asdict(curve), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def load_curve(path: str | os.PathLike) -> PositionCurve:
    try:
        data = orjson.loads(Path(path).read_bytes())
        data["mean_beyond"] = {int(k): v for k, v in data["mean_beyond"].items()}
        return PositionCurve(**data)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: not a loss-by-position JSON ({error})") from None


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_curve(axes, curve: PositionCurve, label: str | None = None) -> None:
    """The curve at its buckets' centres, with a +/-1.96 standard-error band where the windows were kept; the
    legend says how many documents and tokens stand behind each point."""
    points = [(start + curve.bucket_size / 2, loss, se, tokens) for start, loss, se, tokens in
              zip(curve.bucket_starts, curve.loss, curve.stderr or [None] * len(curve.loss), curve.tokens)
              if loss is not None]
    x, y = [p[0] for p in points], [p[1] for p in points]
    behind = (f"{curve.windows} docs x {curve.bucket_size} tokens per point" if curve.windows
              else f"{min(p[3] for p in points)}+ tokens per point")
    line, = axes.plot(x, y, marker=".", label=f"{label}: {behind}" if label else behind)
    if curve.stderr:
        half = [1.96 * (p[2] or 0.0) for p in points]
        axes.fill_between(x, [a - b for a, b in zip(y, half)], [a + b for a, b in zip(y, half)],
                          color=line.get_color(), alpha=0.2, linewidth=0)
