"""megadoc tokenize vs Megatron-LM's preprocess_data.py, and vs the tokenizer's own batch API (the limit).

One run, same input (>= 50 MB of real DCLM text, the shared sample repeated), same tokenizer, 2 workers:
  1. end to end: megadoc's wall time vs preprocess_data.py's — the real script when --megatron-lm points at a
     checkout of tag core_v0.16.1 (PYTHONPATH gets it, plus --extra-pythonpath), else a faithful re-implementation
     of its approach (multiprocessing.Pool.imap over lines, chunksize 32, Megatron-Core's tokenizer class and
     IndexedDatasetBuilder), labelled as such. Target: megadoc >= 1.8x faster. The outputs are compared byte
     for byte.
  2. throughput: megadoc's tokens/s vs raw `encode_batch` on the same texts already in memory. Target >= 85%.
  3. the same for the Llama 3 tokenizer through tiktoken and through HF tokenizers.

    python benchmarks/bench_tokenize.py [--megatron-lm DIR] [--size-mb 50]
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
LLAMA3_HF = SHARED / "tokenizers/llama3/hf"
LLAMA3_TIKTOKEN = SHARED / "tokenizers/llama3/meta-llama-3-8B.tiktoken"


def build_input(out: Path, size_mb: int) -> Path:
    sample = (SHARED / "data/dclm_sample.jsonl").read_bytes()
    path = out / "bench.jsonl"
    with open(path, "wb") as handle:
        for _ in range(-(-size_mb * 2**20 // len(sample))):
            handle.write(sample)
    return path


def run_megadoc(path: Path, prefix: Path, tokenizer: Path, workers: int) -> tuple[float, float]:
    """Process wall seconds, and the tokens/s megadoc reports (its run, without interpreter start-up)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "megadoc", "tokenize", "--input", str(path), "--output-prefix",
                           str(prefix), "--tokenizer-model", str(tokenizer), "--append-eod", "--workers",
                           str(workers), "--no-progress"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    reported = float(done.stderr.rsplit("docs/s, ", 1)[1].split(" tokens/s")[0].replace(",", ""))
    return wall, reported


def run_real_preprocess(checkout: Path, extra: str, path: Path, prefix: Path, workers: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(checkout), extra) if p))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(checkout / "tools/preprocess_data.py"), "--input", str(path),
                    "--output-prefix", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                    str(LLAMA3_HF), "--append-eod", "--workers", str(workers), "--log-interval", "100000"],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - start


class _Encoder:
    """preprocess_data.py's Encoder: one JSON line in, one document's ids and lengths out."""

    def initializer(self):
        from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

        args = argparse.Namespace(
            tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(LLAMA3_HF), vocab_file=None, merge_file=None,
            tokenizer_special_tokens=None, tokenizer_hf_use_fast=False, trust_remote_code=False,
            tokenizer_hf_include_special_tokens=False, tokenizer_metadata=None, vocab_size=None)
        _Encoder.tokenizer = build_tokenizer(args)

    def encode(self, line):
        ids = _Encoder.tokenizer.tokenize(json.loads(line)["text"])
        lens = [len(ids)] if ids else []
        if ids:
            ids.append(_Encoder.tokenizer.eod)
            lens[-1] += 1
        return ids, lens


def run_reimplemented_preprocess(path: Path, prefix: Path, workers: int) -> float:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    start = time.perf_counter()
    encoder = _Encoder()
    encoder.initializer()
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=DType.optimal_dtype(_Encoder.tokenizer.vocab_size))
    with open(path, encoding="utf-8") as lines, multiprocessing.Pool(workers, initializer=encoder.initializer) as pool:
        for ids, lens in pool.imap(encoder.encode, lines, 32):
            builder.add_document(ids, lens)
    builder.finalize(str(prefix) + ".idx")
    return time.perf_counter() - start


def raw_batch_throughput(tokenizer_path: Path, texts: list[str], workers: int) -> float:
    """Tokens/s of the library's batch API on texts in memory, in the batch sizes megadoc uses."""
    from megadoc.preprocess.tokenize import TokenizeConfig
    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    tokenizer = build_tokenizer(TokenizerSpec(str(tokenizer_path), threads=workers))
    batches, batch, chars = [], [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= TokenizeConfig.batch_chars:
            batches.append(batch)
            batch, chars = [], 0
    batches.append(batch)
    start = time.perf_counter()
    tokens = sum(len(ids) for b in batches for ids in tokenizer.encode_batch(b))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-lm", type=Path, help="checkout of Megatron-LM core_v0.16.1 (real preprocess)")
    parser.add_argument("--extra-pythonpath", default="", help="more PYTHONPATH for the real script (e.g. triton)")
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = build_input(tmp, args.size_mb)
        texts = [json.loads(line)["text"] for line in path.open()]
        print(f"input: {path.stat().st_size / 2**20:.1f} MB, {len(texts):,} documents; workers={args.workers}")

        ours, _ = run_megadoc(path, tmp / "ours", LLAMA3_HF, args.workers)
        if args.megatron_lm:
            label = "Megatron-LM tools/preprocess_data.py (real script)"
            theirs = run_real_preprocess(args.megatron_lm, args.extra_pythonpath, path, tmp / "ref", args.workers)
            ref = tmp / "ref_text_document"
        else:
            label = "preprocess_data.py approach, re-implemented (Pool.imap + Megatron-Core tokenizer/builder)"
            theirs = run_reimplemented_preprocess(path, tmp / "ref", args.workers)
            ref = tmp / "ref"
        identical = all((tmp / f"ours{s}").read_bytes() == Path(f"{ref}{s}").read_bytes() for s in (".bin", ".idx"))
        print(f"\n1. end to end, Llama 3 via HF tokenizers ({label})")
        print(f"   megadoc {ours:.2f} s | reference {theirs:.2f} s | speed-up {theirs / ours:.2f}x (target >= 1.8x)"
              f" | outputs byte-identical: {identical}")

        print("\n2./3. megadoc tokens/s vs raw encode_batch tokens/s on the same texts in memory (target >= 85%)")
        tokens = (tmp / "ours.bin").stat().st_size // 4
        for name, tok in (("HF tokenizers", LLAMA3_HF), ("tiktoken", LLAMA3_TIKTOKEN)):
            wall, reported = run_megadoc(path, tmp / f"tp-{name[:2]}", tok, args.workers)
            raw = raw_batch_throughput(tok, texts, args.workers)
            print(f"   Llama 3 via {name:<13}: raw {raw:>11,.0f} tok/s | megadoc run {reported:>11,.0f} tok/s "
                  f"({reported / raw:.1%}) | megadoc process incl. start-up {tokens / wall:>11,.0f} tok/s "
                  f"({tokens / wall / raw:.1%})")


if __name__ == "__main__":
    main()
