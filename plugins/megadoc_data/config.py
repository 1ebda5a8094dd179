"""The blend configuration: what the paper's `DataEfficiencyConfig` fixes, in Megatron-Core's dataclass style, and
its command-line flags, declared once for `megadoc blend`, `megadoc train` and Megatron-LM scripts (which take them
with a `--megadoc-` prefix beside their own --seq-length, --global-batch-size, --seed and --data-cache-path)."""

import math
from dataclasses import dataclass, field

from megadoc.errors import MegadocError

MAX_TRAIN_ITERS = 10_000_000
"""Plans of more steps are refused unless `force`: ~3 years at the paper's 0.1 s/step, so almost surely a typo in E
or r (r = 0.9999999999 asks for 10^10 x base_steps)."""


@dataclass
class MegadocBlendConfig:
    """A real stream epoched E times, mixed with synthetic streams that make up the fraction r of training."""

    real_prefix: str | list[str]
    """Megatron indexed dataset prefix (P.bin / P.idx) of the real training documents, or the prefixes of the
    pieces of one real stream (a big corpus tokenized in parts): read as one stream, epoched together, each piece
    packed on its own (as Megatron-LM packs each --data-path prefix)."""

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

    force: bool = False
    """Accept a plan of more than MAX_TRAIN_ITERS steps."""

    block_cross_document_attention: bool = False
    """Attend only within a document (Megatron's reset_attention_mask at each EOD, and reset_position_ids); False,
    the paper's setting for every run, lets a packed sequence attend across document boundaries (its ablation
    blocks it)."""

    @property
    def real_prefixes(self) -> list[str]:
        return [self.real_prefix] if isinstance(self.real_prefix, str) else list(self.real_prefix)

    def __post_init__(self):
        if not self.real_prefix or not all(self.real_prefixes):
            raise MegadocError("real_prefix: a real dataset prefix is required")
        if len(set(self.real_prefixes)) != len(self.real_prefixes):
            raise MegadocError(f"real_prefix: {' '.join(self.real_prefixes)} names a prefix twice")
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


def add_blend_arguments(parser, prefix: str = "", validation: bool = True, trainer: bool = False,
                        required: bool = True) -> None:
    """The blend's flags. `prefix` names them for a host parser with flags of its own (Megatron-LM: 'megadoc-');
    `trainer` adds what a trainer otherwise gives (--seq-length, --global-batch-size, --seed, --data-cache-path)
    for a stage without one (`megadoc blend`)."""
    group = parser.add_argument_group("megadoc blend")
    group.add_argument(f"--{prefix}real-path", nargs="+", required=required,
                       help="real training dataset prefix (P.bin / P.idx), or the prefixes of its pieces (one stream)")
    group.add_argument(f"--{prefix}synthetic-path", nargs="+", default=[],
                       help="synthetic prefixes, optionally Megatron-style 'w1 p1 w2 p2' (weights sum to 1)")
    group.add_argument(f"--{prefix}real-epochs", type=float, default=1.0, help="E: passes over the real stream")
    group.add_argument(f"--{prefix}synthetic-fraction", type=float, default=0.0,
                       help="r: synthetic share of training sequences, in [0, 1)")
    group.add_argument(f"--{prefix}base-steps", type=int, default=None,
                       help="global batches per real pass (default: one full pass over the real tokens)")
    group.add_argument(f"--{prefix}force", action="store_true",
                       help=f"accept a plan of more than {MAX_TRAIN_ITERS:,} steps")
    if validation:
        group.add_argument(f"--{prefix}valid-path", nargs="*", default=[], help="i.i.d. validation prefixes")
        group.add_argument(f"--{prefix}long-valid-path", nargs="*", default=[],
                           help="long-document validation prefixes")
    group.add_argument(f"--{prefix}block-cross-document-attention", action="store_true",
                       help="attend only within a document (EOD-based masks and position resets); the paper "
                            "attends across documents")
    if trainer:
        group.add_argument("--seq-length", type=int, default=4096)
        group.add_argument("--global-batch-size", type=int, default=64)
        group.add_argument("--seed", type=int, default=1234)
        group.add_argument("--data-cache-path", default=None, help="Megatron-Core index cache folder")


def parse_weighted(values: list[str], flag: str = "--synthetic-path") -> tuple[list[str], list[float] | None]:
    """'p1 p2' or 'w1 p1 w2 p2' (Megatron-LM's --data-path form) -> prefixes, weights."""
    def is_number(text):
        try:
            float(text)
            return True
        except ValueError:
            return False

    if not values or not is_number(values[0]):
        return list(values), None
    if len(values) % 2 or not all(is_number(w) for w in values[::2]):
        raise MegadocError(f"{flag}: {' '.join(values)!r} is not 'weight prefix' pairs")
    return list(values[1::2]), [float(w) for w in values[::2]]


def blend_from_args(args, prefix: str = "", **trainer) -> MegadocBlendConfig:
    """The one flags -> MegadocBlendConfig translation. `trainer` gives the fields the host's own flags carry
    (seq_length, global_batch_size, seed, path_to_cache); missing ones are read from `args`."""
    key = prefix.replace("-", "_")

    def get(name, default=None):
        return getattr(args, key + name, default)

    prefixes, weights = parse_weighted(get("synthetic_path"), f"--{prefix}synthetic-path")
    values = dict(seq_length=getattr(args, "seq_length", None), global_batch_size=getattr(args, "global_batch_size", None),
                  seed=getattr(args, "seed", None), path_to_cache=getattr(args, "data_cache_path", None))
    values.update(trainer)
    real = get("real_path")
    return MegadocBlendConfig(
        real_prefix=real[0] if isinstance(real, list) and len(real) == 1 else real, synthetic_prefixes=prefixes,
        synthetic_weights=weights,
        real_epochs=get("real_epochs"), synthetic_fraction=get("synthetic_fraction"), base_steps=get("base_steps"),
        valid_prefixes=get("valid_path", []), long_valid_prefixes=get("long_valid_path", []), force=get("force", False),
        block_cross_document_attention=get("block_cross_document_attention", False), **values)
