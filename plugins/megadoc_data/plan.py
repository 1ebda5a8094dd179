"""`megadoc blend`: the mixing-and-epoching arithmetic of the paper, as a table, JSON, or Megatron-LM flags.

The paper's code (train.py) trains for floor(base_steps * E / (1 - r)) steps, with the real stream capped at
base_steps global batches per pass and mixture weights (1 - r, r). Here the counts are made exact: of the
N = train_iters * global_batch_size training sequences, round(r * N) are synthetic (r to one sequence) and the
rest are real, i.e. exactly E passes over the real stream whenever base_steps * E / (1 - r) is a whole number (every
point of the paper's grid). The arithmetic uses exact fractions of the decimal r and E, so 777 * 32 / 0.1 is
248,640, not one less.
"""

import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from fractions import Fraction

from megadoc.files import atomic_write, check_output_file
from megadoc.errors import MegadocError
from megadoc_data.config import MAX_TRAIN_ITERS, MegadocBlendConfig, add_blend_arguments, blend_from_args
from megadoc_data.sources import Source, check_same_vocabulary, read_source


@dataclass(frozen=True)
class StreamPlan:
    """What training draws from one stream."""

    prefix: str
    sequences: int  # training sequences drawn from it
    tokens: int  # sequences * seq_length
    pass_sequences: int | None  # sequences in one pass (real: base_steps * global_batch_size); None: unknown
    epochs: float | None  # sequences / pass_sequences


@dataclass(frozen=True)
class Plan:
    """The whole run: steps, totals, and each stream's share."""

    train_iters: int
    global_batch_size: int
    seq_length: int
    base_steps: int
    real_epochs: float
    synthetic_fraction: float
    total_sequences: int
    total_tokens: int
    real: StreamPlan
    synthetic: list[StreamPlan]
    real_parts: list[StreamPlan]
    """The real stream per real prefix (one: `real` itself; several: each piece's share of every pass; empty when
    the pieces' sizes are unknown, i.e. planned without the data)."""

    @property
    def synthetic_sequences(self) -> int:
        return sum(stream.sequences for stream in self.synthetic)

    def to_json(self) -> dict:
        data = asdict(self)
        data["synthetic_sequences"] = self.synthetic_sequences
        data["synthetic_tokens"] = self.synthetic_sequences * self.seq_length
        return data


def train_iters(base_steps: int, real_epochs: float, synthetic_fraction: float) -> int:
    """floor(base_steps * E / (1 - r)), computed exactly on the decimal values given."""
    epochs, fraction = Fraction(str(real_epochs)), Fraction(str(synthetic_fraction))
    return math.floor(base_steps * epochs / (1 - fraction))


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder): they sum to `total` exactly."""
    exact = [Fraction(str(w)) / sum(Fraction(str(v)) for v in weights) * total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def make_plan(config: MegadocBlendConfig, real_pass_sequences: list[int] | None = None,
              synthetic_pass_sequences: list[int | None] | None = None) -> Plan:
    """The exact sample counts of every stream; pure arithmetic (pass sizes, one per real prefix and one per
    synthetic prefix, only fill in base_steps when it is not given, the epoch columns and the real pieces)."""
    gbs, length = config.global_batch_size, config.seq_length
    real_pass = sum(real_pass_sequences) if real_pass_sequences is not None else None
    real_name = " ".join(config.real_prefixes)
    base = config.base_steps
    if base is None:
        if real_pass is None:
            raise MegadocError("base_steps: unknown without the real dataset; pass --base-steps")
        base = real_pass // gbs
        if base == 0:
            raise MegadocError(f"{real_name}: {real_pass} sequences of {length} tokens, fewer than one global batch "
                               f"of {gbs}")
    if real_pass is not None and base * gbs > real_pass:
        raise MegadocError(f"base_steps: {base} x {gbs} sequences exceed one pass over {real_name} "
                           f"({real_pass} sequences of {length} tokens)")
    iters = train_iters(base, config.real_epochs, config.synthetic_fraction)
    _check_size(iters, base, config)
    total = iters * gbs
    synthetic_total = math.floor(Fraction(str(config.synthetic_fraction)) * total + Fraction(1, 2))
    synthetic_counts = apportion(synthetic_total, config.synthetic_weights) if config.synthetic_prefixes else []
    for prefix, count in zip(config.synthetic_prefixes, synthetic_counts):
        if count == 0:
            raise MegadocError(f"synthetic_weights: {prefix} gets no sequence out of {synthetic_total}")
    passes = synthetic_pass_sequences or [None] * len(synthetic_counts)
    real = _stream(real_name, total - synthetic_total, base * gbs, length)
    return Plan(
        train_iters=iters, global_batch_size=gbs, seq_length=length, base_steps=base,
        real_epochs=config.real_epochs, synthetic_fraction=config.synthetic_fraction,
        total_sequences=total, total_tokens=total * length, real=real,
        synthetic=[_stream(p, n, s, length) for p, n, s in zip(config.synthetic_prefixes, synthetic_counts, passes)],
        real_parts=_real_parts(config.real_prefixes, real, real_pass_sequences, length),
    )


def _check_size(iters: int, base: int, config: MegadocBlendConfig) -> None:
    """Refuse a plan of no step, one whose counts overflow int64 indices, and (unless forced) a huge one."""
    what = f"floor({base} x E {config.real_epochs:.12g} / (1 - r {config.synthetic_fraction:.12g})) = {iters:,} steps"
    if iters == 0:
        raise MegadocError(f"real_epochs: {what}; raise E (or base_steps)")
    if iters * config.global_batch_size * config.seq_length >= 2**62:
        raise MegadocError(f"synthetic_fraction: {what}, beyond what any index can count; r must stay below 1")
    if iters > MAX_TRAIN_ITERS and not config.force:
        raise MegadocError(f"real_epochs / synthetic_fraction: {what}, more than {MAX_TRAIN_ITERS:,}: a typo in E or "
                           "r? (--force, or force=true for megadoc pretrain, to train it anyway)")


def _real_parts(prefixes: list[str], real: StreamPlan, pass_sizes: list[int] | None, length: int) -> list[StreamPlan]:
    """Each real piece's share: one pass (base_steps x gbs sequences) apportioned by the pieces' sizes, the real
    total as whole passes of those shares plus the remainder apportioned the same way, so each piece is seen the
    same number of times."""
    if len(prefixes) == 1:
        return [real]
    if pass_sizes is None:
        return []
    per_pass = apportion(real.pass_sequences, pass_sizes)
    passes, rest = divmod(real.sequences, real.pass_sequences)
    counts = [passes * p + r for p, r in zip(per_pass, apportion(rest, per_pass))]
    return [_stream(prefix, count, p, length) for prefix, count, p in zip(prefixes, counts, per_pass)]


def _stream(prefix: str, sequences: int, pass_sequences: int | None, seq_length: int) -> StreamPlan:
    epochs = sequences / pass_sequences if pass_sequences else None
    return StreamPlan(prefix, sequences, sequences * seq_length, pass_sequences, epochs)


def read_sources(config: MegadocBlendConfig) -> tuple[list[Source], list[Source]]:
    """Every training and validation source's header, checked to exist, share a vocabulary (dtype and tokenizer
    fingerprint), and reach seq_length."""
    real = [read_source(p) for p in config.real_prefixes]
    synthetic = [read_source(p) for p in config.synthetic_prefixes]
    valid = [read_source(p) for p in config.valid_prefixes + config.long_valid_prefixes]
    check_same_vocabulary(real + synthetic + valid)
    for source in real + synthetic + valid:
        if source.samples_per_pass(config.seq_length) == 0:
            raise MegadocError(f"{source.prefix}: {source.tokens} tokens, not one sequence of "
                               f"--seq-length {config.seq_length}")
    for source in valid[len(config.valid_prefixes):]:
        longest = int(source.sequence_lengths.max(initial=0))
        if longest < config.seq_length:
            raise MegadocError(f"{source.prefix}: no document reaches --seq-length {config.seq_length} "
                               f"(longest {longest}), so it measures no long-context loss")
    return real, synthetic


def plan_from_data(config: MegadocBlendConfig) -> Plan:
    """The plan, with one-pass sizes read from the .idx headers (and every bad-plan check run first)."""
    real, synthetic = read_sources(config)
    length = config.seq_length
    return make_plan(config, [r.samples_per_pass(length) for r in real], [s.samples_per_pass(length) for s in synthetic])


def format_table(plan: Plan) -> str:
    """The paper's budget table: steps, total and synthetic tokens, epochs over each stream."""
    lines = [f"train_iters {plan.train_iters:,} = floor({plan.base_steps} x {plan.real_epochs:g} / "
             f"(1 - {plan.synthetic_fraction:g})), {plan.global_batch_size} x {plan.seq_length} tokens per step",
             f"total      {plan.total_sequences:>14,} sequences {plan.total_tokens:>18,} tokens",
             f"synthetic  {plan.synthetic_sequences:>14,} sequences "
             f"{plan.synthetic_sequences * plan.seq_length:>18,} tokens "
             f"({plan.synthetic_sequences / plan.total_sequences:.6f} of all)",
             "", f"{'stream':<40} {'sequences':>14} {'tokens':>18} {'pass (seqs)':>12} {'epochs':>8}"]
    pieces = plan.real_parts if len(plan.real_parts) > 1 else []
    for stream in [plan.real] + [replace(p, prefix=f"  {p.prefix}") for p in pieces] + plan.synthetic:
        pass_ = f"{stream.pass_sequences:,}" if stream.pass_sequences else "?"
        epochs = f"{stream.epochs:.3f}" if stream.epochs is not None else "?"
        lines.append(f"{stream.prefix:<40} {stream.sequences:>14,} {stream.tokens:>18,} {pass_:>12} {epochs:>8}")
    return "\n".join(lines)


def megatron_lm_flags(plan: Plan, config: MegadocBlendConfig) -> str:
    """The closest plain Megatron-LM command line: weights (1 - r, r * w_i); its blend is approximate (0.5%
    surplus, real stream not capped at base_steps batches), so this plugin's provider is the exact one."""
    pairs = [(s.sequences, s.prefix) for s in (plan.real_parts or [plan.real]) + plan.synthetic]
    blend = " ".join(f"{count / plan.total_sequences:.10g} {prefix}" for count, prefix in pairs)
    flags = [f"--train-data-path {blend}"]
    if config.valid_prefixes or config.long_valid_prefixes:
        flags.append("--valid-data-path " + " ".join(config.valid_prefixes + config.long_valid_prefixes))
    flags += [f"--train-iters {plan.train_iters}", f"--global-batch-size {plan.global_batch_size}",
              f"--seq-length {plan.seq_length}", f"--seed {config.seed}"]
    return " ".join(flags)


def add_arguments(parser) -> None:
    add_blend_arguments(parser, trainer=True)
    parser.add_argument("--emit", choices=("table", "megatron-lm"), default="table",
                        help="print the budget table, or the equivalent Megatron-LM flags")
    parser.add_argument("--output", default=None, help="also write the plan as JSON here")
    parser.set_defaults(func=run)


def run(args) -> int:
    config = blend_from_args(args)
    if args.output:
        check_output_file(args.output, "--output")
    plan = plan_from_data(config)
    if args.output:
        with atomic_write(args.output, "w") as handle:
            json.dump(plan.to_json(), handle, indent=2)
    if args.emit == "megatron-lm":
        print(megatron_lm_flags(plan, config))
        print("# Megatron-LM's own blend adds a 0.5% surplus per dataset and samples the real stream over full "
              "passes; use megadoc_data's provider for exact counts.", file=sys.stderr)
    else:
        print(format_table(plan))
    return 0
