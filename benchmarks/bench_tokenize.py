"""megadoc tokenize vs Megatron-LM's two preprocessing scripts vs raw gigatoken, side by side on the same input.

One run, same input (>= 50 MB of real DCLM text whose documents do not repeat: the shared sample, each copy of each
document rotated at a random word and one word in ten perturbed, so neither a document nor most of a document's
words were seen before by a tokenizer's cache), same tokenizer, 2 workers,
for the Llama 3 and the SmolLM2 tokenizers:
  1. megadoc tokenize (gigatoken, validated at start-up) and megadoc tokenize --no-gigatoken;
  2. Megatron-LM's tools/preprocess_data.py (--megatron-lm-016: a checkout of core_v0.16.1);
  3. Megatron-LM's tools/preprocess_data_fast.py --use-gigatoken (--megatron-lm: a checkout that has it): gigatoken's
     encode_files on the JSONL, then Megatron-Core's IndexedDatasetBuilder;
  4. raw gigatoken encode_files on the same JSONL (tokenizer loaded first, not timed): the encoder's limit.
The Megatron-LM scripts run under --megatron-python (a Python with torch, transformers and six, e.g. .venv312),
with the checkout first on PYTHONPATH. Reported: process wall seconds (imports included), each tool's own run time
where it prints one, tokens/s, and whether every output is byte-identical to megadoc's. Targets: megadoc >= 3x
faster than the preprocess_data_fast.py approach end to end, and megadoc's run >= 50% of raw encode_files'
tokens/s. Then peak memory (VmHWM) of one 50 MB document, with and without gigatoken.

    python benchmarks/bench_tokenize.py --megatron-lm /work/megatron-lm --megatron-lm-016 /work/megatron-lm-0.16.1 \
        --megatron-python .venv312/bin/python [--size-mb 50] [--repeats 2]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
LLAMA3_HF = SHARED / "tokenizers/llama3/hf"
RAW = """
import sys, time
import gigatoken
from megadoc.preprocess.fast_tokenizer import gigatoken_encoder
from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer
fast = gigatoken_encoder(build_tokenizer(TokenizerSpec(sys.argv[1])), []).fast  # SmolLM2: its byte-patched vocabulary
start = time.perf_counter()
documents = fast.encode_files(gigatoken.JsonlFileSource([sys.argv[2]], field="text"), parallel=True)
print(len(documents.layout.content), time.perf_counter() - start)
"""
PEAK = ("import re, sys; from megadoc.cli import main; code = main(sys.argv[1:]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)")


def perturb(word: str, rng: random.Random) -> str:
    """The word with one letter inserted: a word no tokenizer cache has seen."""
    at = rng.randrange(len(word) + 1)
    return word[:at] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[at:]


def build_input(out: Path, size_mb: int) -> Path:
    """Copies of the shared sample, each document rotated at a random word and one word in ten perturbed: no two
    documents alike, and a long tail of unseen words (as real web text has), so no pre-token cache is flattered."""
    documents = [json.loads(line) for line in (SHARED / "data/dclm_sample.jsonl").read_text().splitlines()]
    rng, path, written, copy = random.Random(0), out / "bench.jsonl", 0, 0
    with open(path, "w") as handle:
        while written < size_mb * 2**20:
            for doc in documents:
                words = [perturb(w, rng) if rng.random() < 0.1 else w for w in doc["text"].split(" ")]
                cut = rng.randrange(len(words))
                line = json.dumps({"id": f"{doc['id']}-{copy}", "text": " ".join(words[cut:] + words[:cut])}) + "\n"
                handle.write(line)
                written += len(line.encode())
            copy += 1
    return path


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return wall, done.stdout + done.stderr


def megadoc(path: Path, prefix: Path, tokenizer: str, workers: int, *extra: str) -> tuple[float, float, int, float]:
    """(process wall s, run s as megadoc reports it, tokens, run s after setting up its encoder)."""
    wall, out = timed([sys.executable, "-m", "megadoc", "tokenize", "--input", str(path), "--output-prefix", str(prefix),
                       "--tokenizer-model", tokenizer, "--append-eod", "--workers", str(workers), "--no-progress",
                       *extra])
    tokens = int(re.search(r"sequences, ([\d,]+) tokens", out).group(1).replace(",", ""))
    run, setup = re.search(r"tokens \(\w+\) in ([\d.]+) s \(([\d.]+) s setting up", out).groups()
    return wall, float(run), tokens, float(run) - float(setup)


def megatron(args, script: str, checkout: Path, path: Path, prefix: Path, tokenizer: str, *extra: str):
    """(process wall s, the run time the script prints or None)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    wall, out = timed([args.megatron_python, str(checkout / "tools" / script), "--input", str(path), "--output-prefix",
                       str(prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
                       "--append-eod", *extra], env)
    elapsed = re.search(r"Elapsed time: ([\d.]+) seconds", out)
    return wall, float(elapsed.group(1)) if elapsed else None


def identical(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


def best(runs: list) -> tuple:
    return min(runs, key=lambda run: run[0])


def compare(args, name: str, tokenizer: str, path: Path, tmp: Path) -> None:
    print(f"\n== {name} ({tokenizer})")
    rows, outputs = {}, {}
    sides = {"megadoc": lambda: megadoc(path, tmp / f"{name}-megadoc", tokenizer, args.workers),
             "megadoc --no-gigatoken": lambda: megadoc(path, tmp / f"{name}-ref", tokenizer, args.workers,
                                                       "--no-gigatoken")}
    outputs["megadoc --no-gigatoken"] = tmp / f"{name}-ref"
    if args.megatron_lm_016:
        sides["preprocess_data.py"] = lambda: megatron(args, "preprocess_data.py", args.megatron_lm_016, path,
                                                       tmp / f"{name}-pd", tokenizer, "--workers", str(args.workers),
                                                       "--log-interval", "1000000")
        outputs["preprocess_data.py"] = tmp / f"{name}-pd_text_document"
    if args.megatron_lm:
        sides["preprocess_data_fast.py --use-gigatoken"] = lambda: megatron(
            args, "preprocess_data_fast.py", args.megatron_lm, path, tmp / f"{name}-fast", tokenizer, "--use-gigatoken")
        outputs["preprocess_data_fast.py --use-gigatoken"] = tmp / f"{name}-fast_text_document"
    sides["raw gigatoken encode_files"] = lambda: tuple(map(float, timed(
        [sys.executable, "-c", RAW, tokenizer, str(path)])[1].split()[::-1]))
    for _ in range(args.repeats):  # in rounds: no side twice in a row
        for side, run in sides.items():
            if isinstance(rows.get(side), str):
                continue  # failed
            try:
                rows.setdefault(side, []).append(run())
            except RuntimeError as error:
                rows[side] = str(error)
    ours = best(rows["megadoc"])
    tokens = ours[2]
    print(f"   {'side':<42} {'wall s':>8} {'run s':>7} {'tokens/s (run)':>15}  byte-identical to megadoc")
    for side, result in rows.items():
        if isinstance(result, str):
            print(f"   {side:<42} failed: {result}")
            continue
        if side == "raw gigatoken encode_files":
            encode, documents_tokens = best(result)
            print(f"   {side:<42} {'':>8} {encode:>7.2f} {documents_tokens / encode:>15,.0f}  (ids only, no EOD, "
                  "not written)")
            rows[side] = documents_tokens / encode
            continue
        wall, run = best(result)[:2]
        same = identical(tmp / f"{name}-megadoc", outputs[side]) if side in outputs else ""
        print(f"   {side:<42} {wall:>8.2f} {run or float('nan'):>7.2f} "
              f"{tokens / run if run else float('nan'):>15,.0f}  {same}")
    fast = rows.get("preprocess_data_fast.py --use-gigatoken")
    if isinstance(fast, list):
        print(f"   megadoc vs preprocess_data_fast.py end to end: {best(fast)[0] / ours[0]:.2f}x faster (target >= 3x); "
              f"their run time vs megadoc's: {best(fast)[1] / ours[1]:.2f}x")
    if isinstance(rows.get("preprocess_data.py"), list):
        print(f"   megadoc vs preprocess_data.py end to end: {best(rows['preprocess_data.py'])[0] / ours[0]:.2f}x faster")
    if isinstance(rows.get("raw gigatoken encode_files"), float):
        raw = rows["raw gigatoken encode_files"]
        print(f"   megadoc's tokens/s once its encoder is set up (gigatoken loaded and checked, {ours[1] - ours[3]:.2f} s): "
              f"{tokens / ours[3]:,.0f}, {tokens / ours[3] / raw:.0%} of raw encode_files' (target >= 50%; whole run "
              f"{tokens / ours[1] / raw:.0%})")


def huge_document(args, tmp: Path) -> None:
    """Peak memory of one 50 MB document (the shared sample concatenated), with and without gigatoken."""
    text = "\n\n".join(json.loads(line)["text"] for line in (SHARED / "data/dclm_sample.jsonl").read_text().splitlines())
    text = (text * (-(-50 * 2**20 // len(text.encode()))))[:50 * 2**20]
    path = tmp / "huge.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    print(f"\n== one document of {path.stat().st_size / 2**20:.0f} MB, Llama 3 (peak RSS, VmHWM)")
    for extra in ([], ["--no-gigatoken"]):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK, "tokenize", "--input", str(path), "--output-prefix",
                               str(tmp / "huge"), "--tokenizer-model", str(LLAMA3_HF), "--no-progress", "--workers",
                               str(args.workers), *extra], capture_output=True, text=True, check=True)
        print(f"   megadoc {' '.join(extra) or '(gigatoken)':<16} {int(done.stdout.split()[-1]) / 1024:>7,.0f} MB "
              f"in {time.perf_counter() - start:.1f} s (before: 5.5 GB through HF tokenizers whole)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-lm", type=Path, help="Megatron-LM checkout with tools/preprocess_data_fast.py")
    parser.add_argument("--megatron-lm-016", type=Path, help="Megatron-LM checkout of core_v0.16.1")
    parser.add_argument("--megatron-python", default=sys.executable,
                        help="the Python that runs Megatron-LM's scripts (needs torch, transformers, six, gigatoken)")
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    from megadoc.preprocess.generate.embedded_model import default_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = build_input(tmp, args.size_mb)
        print(f"input: {path.stat().st_size / 2**20:.1f} MB, {sum(1 for _ in path.open()):,} documents (none "
              f"repeated); workers={args.workers}; best of {args.repeats}")
        for name, tokenizer in (("llama3", str(LLAMA3_HF)), ("smollm2", default_model_dir())):
            compare(args, name, tokenizer, path, tmp)
        huge_document(args, tmp)


if __name__ == "__main__":
    main()
