"""megadoc assemble at scale: peak memory and documents/s at G = 32 as the corpus grows (target: peak RSS flat within
1.5x from 1k to 64k documents; throughput not below the previous, in-memory implementation's).

Synthetic generation shards in the real shard format (8 shards, 64 documents per chunk, G = 32 rephrases of
~2.8 KB, the issue's setting) over a corpus of real DCLM documents; `megadoc assemble --method stitched` writes the
stream (JSONL, no tokenizer: assemble alone). Peak memory is that of the whole process tree (workers included:
the sum of their PSS, so pages forked workers share are counted once), sampled every 20 ms. With --today PYTHON (a Python whose megadoc is the previous implementation, e.g.
/work/main/.venv/bin/python) the same inputs run through it too, up to --today-max documents (it holds everything
in memory: ~0.14 MB per document).

    python benchmarks/bench_assemble.py [--docs 1000 4000 16000 64000] [--today /work/main/.venv/bin/python]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SHARED = Path(__file__).resolve().parents[2] / "shared"
G, SHARDS, CHUNK_DOCS, REPHRASE_CHARS = 32, 8, 64, 2800


def write_inputs(out: Path, docs: int) -> tuple[Path, Path]:
    """A corpus of `docs` real documents (rotated copies of the sample) and G rephrases of each, sharded."""
    from megadoc.preprocess.generate.shards import COLUMNS, commit_chunk, shard_dir, shard_of, write_manifest

    sample = [json.loads(line)["text"] for line in (SHARED / "data/dclm_sample.jsonl").read_text().splitlines()]
    words = " ".join(sample).split()
    rng = random.Random(docs)
    pool = " ".join(rng.choice(words) for _ in range(400_000))
    corpus = out / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for i in range(docs):
            text = sample[i % len(sample)]
            cut = rng.randrange(len(text))
            handle.write(json.dumps({"id": f"doc{i}", "text": text[cut:] + text[:cut]}) + "\n")
    generations = out / "gen"
    by_shard: dict[int, list[str]] = {}
    for i in range(docs):
        by_shard.setdefault(shard_of(f"doc{i}", SHARDS), []).append(f"doc{i}")
    for shard, ids in by_shard.items():
        directory = shard_dir(str(generations), shard, SHARDS)
        directory.mkdir(parents=True)
        manifest = {"params": {"num_shards": SHARDS}, "params_hash": "bench", "chunks": [], "complete": True,
                    "counts": {}}
        for n, start in enumerate(range(0, len(ids), CHUNK_DOCS)):
            rows = []
            for doc_id in ids[start:start + CHUNK_DOCS]:
                for index in range(G):
                    at = rng.randrange(len(pool) - REPHRASE_CHARS)
                    rows.append({**dict.fromkeys(COLUMNS), "doc_id": doc_id, "kind": "rephrase", "index": index,
                                 "text": pool[at:at + REPHRASE_CHARS], "model": "bench", "params_hash": "bench",
                                 "finish_reason": "stop", "truncated": False})
            commit_chunk(directory, manifest, rows, {"file": f"chunk-{n:05d}.parquet", "rows": len(rows),
                                                     "docs": len(rows) // G})
        write_manifest(directory, manifest)
    return corpus, generations


def run(python: str, corpus: Path, generations: Path, output: Path, workers: int) -> tuple[float, float, dict]:
    """(wall s, peak memory MB of the process tree (PSS), the summary)."""
    command = [python, "-m", "megadoc", "assemble", "--method", "stitched", "--input", str(corpus), "--generations",
               str(generations), "--output", str(output), "--workers", str(workers)]
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process] + process.children(recursive=True)
            peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(process.stderr.read().strip().splitlines()[-1])
    return wall, peak / 2**20, json.loads(Path(f"{output}.summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--today", help="a Python whose megadoc is the previous assemble (e.g. /work/main/.venv)")
    parser.add_argument("--today-max", type=int, default=16000, help="largest corpus the previous one gets")
    args = parser.parse_args()
    print(f"G = {G}, ~{REPHRASE_CHARS} characters per rephrase, {SHARDS} shards, workers={args.workers}")
    print(f"{'docs':>7} {'gen MB':>8} | {'megadoc s':>9} {'docs/s':>8} {'peak MB':>8} | "
          f"{'previous s':>10} {'docs/s':>8} {'peak MB':>8} | same records & characters")
    peaks = []
    for docs in args.docs:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            corpus, generations = write_inputs(tmp, docs)
            size = sum(p.stat().st_size for p in generations.rglob("*.parquet")) / 2**20
            wall, peak, summary = run(sys.executable, corpus, generations, tmp / "new.jsonl", args.workers)
            peaks.append(peak)
            line = f"{docs:>7,} {size:>8,.0f} | {wall:>9.1f} {docs / wall:>8,.0f} {peak:>8,.0f} | "
            if args.today and docs <= args.today_max:
                (tmp / "new.jsonl").unlink()
                old_wall, old_peak, old = run(args.today, corpus, generations, tmp / "old.jsonl", args.workers)
                same = (old["records"], old["characters"]["total"]) == (summary["records"],
                                                                        summary["characters"]["total"])
                line += f"{old_wall:>10.1f} {docs / old_wall:>8,.0f} {old_peak:>8,.0f} | {same}"
            print(line, flush=True)
    print(f"peak memory, largest / smallest corpus: {max(peaks) / min(peaks):.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
