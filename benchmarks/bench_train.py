"""Training throughput: megadoc's Megatron-Core loop (`megadoc train`) vs the Megatron-Bridge recipe (`megadoc
pretrain`) on the same model and plan, side by side; plus the core loop's exact resume and evaluation.

For each --recipes size, both trainers train the same megadoc plan (the tokenized --input as the real stream, E = 1,
--train-iters base steps, so train_iters = --train-iters) at --seq-length with the same global and micro batch, each
as its own `megadoc` process, as a user runs it. Their train_log.jsonl give the step times; the median after
--warmup steps gives tokens/s and MFU (model FLOPs per step: 6 x matmul parameters x tokens, plus attention's
12 x layers x hidden x seq x tokens as Megatron-LM counts it, over --peak-tflops; 989 = H100 / H200 dense bf16), and
the Bridge/core ratios are printed
beside the targets (Bridge >= 1.5x the core loop's tokens/s at 300m, MFU >= 35% at 300m on an H100/H200-class GPU).

The Bridge path needs a GPU with Transformer Engine (a NeMo container, or .venv312 on a GPU machine): it trains
with TE layers, fused attention, the distributed optimizer and bf16, as the recipe does on a cluster. On a CPU-only
machine run `--backends core`, or smoke-test the script with the test-only CPU adaptations
(PYTHONPATH=tests/bridge/cpu_site and the overrides of tests/bridge/cpu_bridge.py via --bridge-override).
--resume-check also trains the core loop saving at the midpoint and resuming in a fresh process (exit 1 unless the
logs are identical) and evaluates the resumed checkpoint.

Measured before on one H100 (torch 2.11, megatron-core 0.16.1, core loop only): tiny, 64 x 64 tokens: 0.085 s/step,
48K tokens/s; 150m at seq 1024, 32 x 1024 tokens: 0.217 s/step, 151K tokens/s; resumed runs identical at all 20 steps.

    python benchmarks/bench_train.py --input train.jsonl --valid valid.jsonl --tokenizer-model DIR \\
        [--recipes 150m 300m --seq-length 4096 --global-batch-size 64 --micro-batch-size 4 --train-iters 30] \\
        [--backends core bridge] [--resume-check] [--json out.json]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KEYS = ("iteration", "consumed_samples", "loss", "lr", "grad_norm")
BIN = Path(sys.executable).parent


def megadoc(*args: str, nproc: int | None = None) -> None:
    """One `megadoc` process (under torchrun with nproc: Bridge initialises from torchrun's environment)."""
    print("$ megadoc", " ".join(args), flush=True)
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "-m", "megadoc"] if nproc \
        else [sys.executable, "-m", "megadoc"]
    subprocess.run([*launcher, *args], check=True)


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def model_flops_per_token(recipe: str, seq_length: int, vocab_size: int) -> float:
    """Training FLOPs per token (forward + backward): 6 x the parameters of every matmul (embedding lookups are
    not matmuls; the output layer is), plus attention scores and weighted values, 12 x layers x hidden x seq (the
    full square, causal masking not discounted, as Megatron-LM counts it)."""
    from megadoc.recipes.models import MODELS

    m = MODELS[recipe]
    kv = 2 * m.num_query_groups * (m.hidden_size // m.num_attention_heads)
    per_layer = m.hidden_size * (m.hidden_size + kv) + m.hidden_size ** 2 + 3 * m.hidden_size * m.ffn_hidden_size
    matmul = m.num_layers * per_layer + vocab_size * m.hidden_size
    return 6 * matmul + 12 * m.num_layers * m.hidden_size * seq_length


def throughput(log: list[dict], warmup: int, tokens_per_step: int, flops_per_token: float, peak_tflops: float) -> dict:
    times = [r["step_time_s"] for r in log[warmup:]] or [r["step_time_s"] for r in log]
    step = statistics.median(times)
    return {"median_step_time_s": step, "tokens_per_s": tokens_per_step / step,
            "mfu": tokens_per_step * flops_per_token / step / (peak_tflops * 1e12),
            "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "steps": len(log)}


def train(backend: str, recipe: str, args, data: Path, out: Path) -> list[dict]:
    """`--train-iters` steps of the plan with one trainer; its loss-log records."""
    if backend == "core":
        megadoc("train", "--recipe", recipe, "--tokenizer-model", args.tokenizer_model, "--real-path", str(data),
                "--real-epochs", "1", "--base-steps", str(args.train_iters), "--seq-length", str(args.seq_length),
                "--global-batch-size", str(args.global_batch_size), "--micro-batch-size", str(args.micro_batch_size),
                "--seed", "7", "--save", str(out))
        return read_log(out)
    megadoc("pretrain", recipe, f"tokenizer_model={args.tokenizer_model}", f"real_path={data}", "real_epochs=1",
            f"base_steps={args.train_iters}", f"seq_length={args.seq_length}",
            f"global_batch_size={args.global_batch_size}", f"micro_batch_size={args.micro_batch_size}", "seed=7",
            f"save_interval={args.train_iters}", f"output_dir={out}", *args.bridge_override, nproc=1)
    return read_log(out / "checkpoints")


def resume_check(args, work: Path) -> dict:
    """The core loop uninterrupted vs saved at the midpoint and resumed in a fresh process, then evaluated."""
    common = ["--recipe", args.recipes[0], "--tokenizer-model", args.tokenizer_model, "--data-path",
              str(work / "train"), "--train-iters", str(args.train_iters), "--seq-length", str(args.seq_length),
              "--global-batch-size", str(args.global_batch_size), "--micro-batch-size", str(args.micro_batch_size),
              "--seed", "7"]
    half = str(args.train_iters // 2)
    megadoc("train", *common, "--save", str(work / "full"))
    megadoc("train", *common, "--save", str(work / "resumed"), "--save-interval", half, "--exit-interval", half)
    megadoc("train", *common, "--save", str(work / "resumed"), "--load", str(work / "resumed"))
    full, resumed = read_log(work / "full"), read_log(work / "resumed")
    megadoc("eval", "--load", str(work / "resumed"), "--valid-path", str(work / "valid"), "--long-valid-path",
            str(work / "valid"), "--output-dir", str(work / "eval"))
    evaluation = json.loads((work / "eval" / "eval.json").read_text())
    return {"resume_exact": [[r[k] for k in KEYS] for r in full] == [[r[k] for k in KEYS] for r in resumed],
            "iid_loss": evaluation.get("iid_loss"), "long_loss": evaluation.get("long_loss")}


def compare(results: dict, backends: list[str]) -> None:
    print(f"\n{'recipe':<7}{'trainer':<9}{'s/step':>9}{'tokens/s':>12}{'MFU':>8}{'loss':>17}")
    for recipe, runs in results.items():
        for backend in backends:
            r = runs[backend]
            print(f"{recipe:<7}{backend:<9}{r['median_step_time_s']:>9.4f}{r['tokens_per_s']:>12,.0f}"
                  f"{r['mfu']:>8.1%}{r['first_loss']:>8.3f} -> {r['last_loss']:.3f}")
        if set(backends) == {"core", "bridge"}:
            ratio = runs["bridge"]["tokens_per_s"] / runs["core"]["tokens_per_s"]
            runs["bridge_over_core"] = ratio
            target = " (target at 300m: >= 1.5x, MFU >= 35%)" if recipe == "300m" else ""
            print(f"{recipe:<7}bridge / core tokens/s: {ratio:.2f}x{target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="training corpus (JSONL with 'text')")
    parser.add_argument("--valid", required=True, help="validation corpus (JSONL with 'text')")
    parser.add_argument("--tokenizer-model", required=True, help="an HF tokenizer folder (both trainers read it)")
    parser.add_argument("--recipes", nargs="+", default=["150m", "300m"])
    parser.add_argument("--backends", nargs="+", choices=("core", "bridge"), default=["core", "bridge"])
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--global-batch-size", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--train-iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median step time")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--bridge-override", action="append", default=[], metavar="KEY=VALUE",
                        help="more `megadoc pretrain` arguments (repeatable)")
    parser.add_argument("--resume-check", action="store_true", help="also check the core loop's exact resume")
    parser.add_argument("--json", help="write the summary here too")
    args = parser.parse_args()

    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    vocab_size = build_tokenizer(TokenizerSpec(args.tokenizer_model)).vocab_size
    tokens_per_step = args.global_batch_size * args.seq_length
    summary = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, corpus in (("train", args.input), ("valid", args.valid)):
            megadoc("tokenize", "--input", corpus, "--output-prefix", str(work / name), "--tokenizer-model",
                    args.tokenizer_model, "--append-eod", "--no-progress")
        for recipe in args.recipes:
            flops = model_flops_per_token(recipe, args.seq_length, vocab_size)
            summary["results"][recipe] = {}
            for backend in args.backends:
                out = work / f"{recipe}-{backend}"
                log = train(backend, recipe, args, work / "train", out)
                summary["results"][recipe][backend] = throughput(log, args.warmup, tokens_per_step, flops,
                                                                 args.peak_tflops)
                shutil.rmtree(out)  # checkpoints of the larger models fill a disk fast
        compare(summary["results"], args.backends)
        if args.resume_check:
            summary["resume"] = resume_check(args, work)
            print(json.dumps(summary["resume"]))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary.get("resume", {}).get("resume_exact", True) else 1


if __name__ == "__main__":
    sys.exit(main())
