"""The blend configuration: what the paper's `DataEfficiencyConfig` fixes, in Megatron-Core's dataclass style."""

import math
from dataclasses import dataclass, field

from megadoc.errors import MegadocError


@dataclass
class MegadocBlendConfig:
    """A real stream epoched E times, mixed with synthetic streams that make up the fraction r of training."""

    real_prefix: str
    """Megatron indexed dataset prefix (P.bin / P.idx) of the real training documents."""

    synthetic_prefixes: list[str] = field(default_factory=list)
    """Prefixes of the synthetic streams (simple, stitched or stretched megadocs)."""

    synthetic_weights: list[float] | None = None
    """Share of the synthetic fraction each synthetic prefix gets; must sum to 1. None: equal shares."""

    real_epochs: float = 1.0
    """E: passes over the real stream (one pass = base_steps global batches, the paper's 777-batch cap)."""

    synthetic_fraction: float = 0.0
    """r: fraction of all training sequences drawn from the synthetic streams, in [0, 1)."""

    seq_length: int = 4096
    """Tokens per training sequence (Megatron-LM --seq-length)."""

    global_batch_size: int = 64
    """Sequences per optimizer step (Megatron-LM --global-batch-size)."""

    base_steps: int | None = None
    """Global batches in one real epoch. None: one full pass over the real tokens (the paper: 777 for 203.7M
    tokens at 64 x 4096)."""

    seed: int = 1234
    """Seed of every shuffle (document, sample and per-epoch orders); same seed, same batches."""

    valid_prefixes: list[str] = field(default_factory=list)
    """Validation prefixes, each evaluated on its own (e.g. i.i.d. real held-out, long documents)."""

    long_valid_prefixes: list[str] = field(default_factory=list)
    """Long-document validation prefixes: at least one document must reach seq_length tokens."""

    path_to_cache: str | None = None
    """Where Megatron-Core caches the index arrays (shared by ranks; rank 0 builds first)."""

    def __post_init__(self):
        if not self.real_prefix:
            raise MegadocError("real_prefix: a real dataset prefix is required")
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise MegadocError(f"synthetic_fraction: {self.synthetic_fraction} is outside [0, 1)")
        if not (self.real_epochs > 0 and math.isfinite(self.real_epochs)):
            raise MegadocError(f"real_epochs: {self.real_epochs} must be > 0")
        if self.synthetic_fraction > 0 and not self.synthetic_prefixes:
            raise MegadocError("synthetic_prefixes: synthetic_fraction > 0 needs at least one synthetic prefix")
        if self.synthetic_fraction == 0 and self.synthetic_prefixes:
            raise MegadocError("synthetic_fraction: 0 with synthetic prefixes given; set r > 0 or drop them")
        for name in ("seq_length", "global_batch_size"):
            if getattr(self, name) <= 0:
                raise MegadocError(f"{name}: {getattr(self, name)} must be > 0")
        if self.base_steps is not None and self.base_steps <= 0:
            raise MegadocError(f"base_steps: {self.base_steps} must be > 0")
        if self.synthetic_weights is None:
            count = len(self.synthetic_prefixes)
            self.synthetic_weights = [1.0 / count] * count if count else []
        self._check_weights()

    def _check_weights(self):
        if len(self.synthetic_weights) != len(self.synthetic_prefixes):
            raise MegadocError(f"synthetic_weights: {len(self.synthetic_weights)} weights for "
                               f"{len(self.synthetic_prefixes)} synthetic prefixes")
        if any(not w > 0 for w in self.synthetic_weights):
            raise MegadocError(f"synthetic_weights: {self.synthetic_weights} must all be > 0")
        if self.synthetic_weights and abs(sum(self.synthetic_weights) - 1.0) > 1e-6:
            raise MegadocError(f"synthetic_weights: {self.synthetic_weights} sum to "
                               f"{sum(self.synthetic_weights):g}, not 1")
