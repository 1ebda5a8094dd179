"""Build time, peak memory and fetch rate of the megadoc blend vs Megatron-Core's own builder, same data and plan.

Each build runs in a fresh process (peak RSS is per process, and index caches are off), so neither side profits
from the other's imports or page cache of indices. Targets: build time and peak memory <= 1.1x the
BlendedMegatronDatasetBuilder with the equivalent weights (1 - r, r); samples/s fetched >= 0.95x plain
GPTDatasets over the same prefixes read in the plan's shares (Megatron-Core's own blend is printed beside it).

    python benchmarks/bench_blend.py [--real-path P --synthetic-path P ...] [--tokens-real 4000000] [--json out]
"""

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time

import numpy

VOCAB = 128_256  # Llama 3: int32 tokens


class _Tokenizer:
    """What GPTDatasetConfig needs of a tokenizer."""

    vocab_size, eod = VOCAB, 128_001
    unique_identifiers = {"class": "bench", "vocab": VOCAB}


def write_random(prefix: str, tokens: int, mean_length: int, seed: int) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    written = 0
    while written < tokens:
        length = int(rng.integers(mean_length // 2, mean_length * 3 // 2))
        builder.add_document(rng.integers(0, VOCAB, length, dtype=numpy.int32), [length])
        written += length
    builder.finalize(prefix + ".idx")
    return prefix


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _megadoc(config):
    from megadoc_data.datasets import build_datasets

    return build_datasets(config, _Tokenizer())[0]


def _megatron(config):
    from megadoc_data.plan import plan_from_data
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    plan = plan_from_data(config)
    weights = [plan.real.sequences] + [s.sequences for s in plan.synthetic]
    blend = ([config.real_prefix] + config.synthetic_prefixes, [w / plan.total_sequences for w in weights])
    gpt = GPTDatasetConfig(random_seed=config.seed, sequence_length=config.seq_length, blend=blend, split="100,0,0",
                           tokenizer=_Tokenizer(), reset_position_ids=False, reset_attention_mask=False,
                           eod_mask_loss=False)
    return BlendedMegatronDatasetBuilder(GPTDataset, [plan.total_sequences, 0, 0], lambda: True, gpt).build()[0]


def _plain(config):
    """A plain GPTDataset over each stream's prefix, each fetched in its share of the plan (the reference: the same
    files and the same mix of samples, without any blend layer)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    datasets = []
    for prefix in [config.real_prefix] + config.synthetic_prefixes:
        gpt = GPTDatasetConfig(random_seed=config.seed, sequence_length=config.seq_length,
                               blend=([prefix], None), split="100,0,0", tokenizer=_Tokenizer(),
                               reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
        datasets.append(BlendedMegatronDatasetBuilder(GPTDataset, [None, 0, 0], lambda: True, gpt).build()[0])
    return datasets


def _fetch_rate(dataset, fetches: int, shares: list[float]) -> float:
    """Samples/s over `fetches` random samples; a list of plain datasets is read in the plan's shares."""
    rng = numpy.random.default_rng(0)
    if isinstance(dataset, list):
        picks = [(d, int(i)) for d, share in zip(dataset, shares)
                 for i in rng.integers(0, len(d), round(fetches * share))]
        rng.shuffle(picks)
    else:
        picks = [(dataset, int(i)) for i in rng.integers(0, len(dataset), fetches)]
    start = time.perf_counter()
    for source, index in picks:
        source[index]
    return len(picks) / (time.perf_counter() - start)


def _measure(name, config, fetches, queue):
    import megatron.core.datasets.gpt_dataset  # noqa: F401  imports are not part of the build
    import megadoc_data.datasets  # noqa: F401

    base_rss = _rss_mb()
    start = time.perf_counter()
    dataset = {"megadoc": _megadoc, "megatron": _megatron, "plain": _plain}[name](config)
    build = time.perf_counter() - start
    peak = _rss_mb()
    from megadoc_data.plan import plan_from_data

    plan = plan_from_data(config)
    shares = [s.sequences / plan.total_sequences for s in [plan.real] + plan.synthetic]
    rate = _fetch_rate(dataset, fetches, shares)
    counts = (numpy.bincount(dataset.dataset_index).tolist() if hasattr(dataset, "dataset_index") else
              [len(d) for d in dataset])
    queue.put({"build_s": round(build, 4), "peak_rss_mb": round(peak, 1), "build_rss_mb": round(peak - base_rss, 1),
               "samples_per_s": round(rate, 1), "samples": sum(counts), "per_stream": counts})


def measure(name, config, fetches):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(name, config, fetches, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-path", default=None)
    parser.add_argument("--synthetic-path", nargs="*", default=[])
    parser.add_argument("--tokens-real", type=int, default=4_000_000, help="random real tokens when no --real-path")
    parser.add_argument("--real-epochs", type=float, default=16)
    parser.add_argument("--synthetic-fraction", type=float, default=0.75)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--fetches", type=int, default=20_000)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from megadoc_data.config import MegadocBlendConfig

    with tempfile.TemporaryDirectory() as tmp:
        real = args.real_path or write_random(os.path.join(tmp, "real"), args.tokens_real, 1200, 1)
        synthetic = args.synthetic_path or [write_random(os.path.join(tmp, "syn"), args.tokens_real * 8, 700, 2)]
        config = MegadocBlendConfig(real_prefix=real, synthetic_prefixes=synthetic, real_epochs=args.real_epochs,
                                    synthetic_fraction=args.synthetic_fraction, seq_length=args.seq_length,
                                    global_batch_size=args.global_batch_size)
        results = {name: measure(name, config, args.fetches) for name in ("megatron", "megadoc", "plain")}
        from megadoc_data.plan import plan_from_data

        plan = plan_from_data(config)
        results["planned_per_stream"] = [plan.real.sequences] + [s.sequences for s in plan.synthetic]
    ours, theirs, plain = results["megadoc"], results["megatron"], results["plain"]
    results["ratios"] = {"build_time": round(ours["build_s"] / theirs["build_s"], 3),
                         "peak_memory": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
                         "build_memory": round(max(ours["build_rss_mb"], 1) / max(theirs["build_rss_mb"], 1), 3),
                         "fetch_rate_vs_plain": round(ours["samples_per_s"] / plain["samples_per_s"], 3),
                         "megatron_fetch_rate_vs_plain": round(theirs["samples_per_s"] / plain["samples_per_s"], 3)}
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
