"""`megadoc generate estimate rephrase|rationale <the run's flags>`: what a generation run will cost, before it runs.

The same command line as the run, with `estimate` in front. It counts the corpus (`corpus.count_records`), then
measures the configured model on this machine, either from the run's own output directory when it already holds
committed chunks made with these parameters (their manifests record documents, tokens, engines and seconds), or on
a sample: the first document of each of `--sample-docs` equal shares of the corpus, generated through the real
shard path by one engine in this process. The sample run gives
  - the engine's start-up seconds;
  - prefill seconds per prompt token (a pass with max_tokens 1, which also fills the prefix cache);
  - every sample's length (generation stops at EOS as in the real run);
  - how many samples the engine runs at once (max_num_seqs, or fewer where their KV cache does not fit);
  - decode step seconds as a line in the running samples, a + c x b, through two points timed at that batch size
    and a quarter of it (the sample's prompts sampled n times each, for a dozen tokens).
Wall time on E engines is then start-up + prefill + a replay of continuous batching: N/E documents' G samples,
lengths cycling through the measured ones, max_num_seqs at a time, each step costing a + c x b. GPU-hours are
wall x GPUs. The synthetic tokens a stream will hold (for `megadoc blend`) are the kept generations plus the real
copy, in the training tokenizer when `--tokenizer-model` is given (else the model's).

Not modelled: preemptions and chunk boundaries (the run keeps the next chunk queued in the engine).
benchmarks/bench_estimate.py compares a prediction with a real run on the same documents.
"""

import heapq
import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import corpus_layout, count_records, iter_documents
from megadoc.preprocess.generate.engine import EngineConfig, resolve_model
from megadoc.preprocess.generate.run import GenerateConfig, load_exclude_ids, run_generate
from megadoc.preprocess.generate.shards import MANIFEST, iter_rows, read_manifest

STEADY_STATE_SEQUENCES = 2_000_000
"""Past this many samples per engine the batch is full nearly all the time: no replay, a steady-state rate."""


@dataclass
class Measurement:
    """What the model did on this machine, per engine."""

    source: str
    """where the figures come from (a sample run, or the run's manifests)"""
    docs: int
    """documents generated"""
    prompt_tokens: int
    lengths: list[int]
    """tokens of every sample"""
    startup_seconds: float
    seconds_per_doc: float | None = None
    """manifests: engine-seconds per document of the real run (prefill and decode together)"""
    prefill_seconds_per_token: float = 0.0
    step: tuple[float, float] = (0.0, 0.0)
    """decode step seconds = step[0] + step[1] * running sequences"""
    max_num_seqs: int = 256
    """samples running at once (the engine's max_num_seqs, or fewer where their KV cache does not fit)"""
    kept_texts: list[str] = field(default_factory=list)
    """the generations kept (post-processed), for the stream's tokens"""


# ---------------------------------------------------------------------------------------------------- measuring


def sample_documents(config: GenerateConfig, count: int, exclude: frozenset[str]) -> list:
    """The first non-excluded document of each of `count` equal shares of the corpus (spread over all of it)."""
    docs = []
    for share in range(count):
        doc = next((d for d in iter_documents(config.inputs, config.json_key, (share, count))
                    if d.id not in exclude), None)
        if doc is not None and doc.id not in {d.id for d in docs}:
            docs.append(doc)
    if not docs:
        raise MegadocError(f"{' '.join(config.inputs)}: no document to measure on")
    return docs


def _probe_step(llm, requests, sampling, sequences: int, steps: int = 16) -> float:
    """Median seconds of a decode step with `sequences` samples running: the sample's prompts (already in the prefix
    cache) sampled n times each for `steps` tokens. The median leaves out the first steps, which also finish the
    prompts of the n copies."""
    n = -(-sequences // len(requests))
    prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests[:-(-sequences // n)]]
    params = replace(sampling, n=n, max_tokens=steps, ignore_eos=True).vllm()
    llm.enqueue(prompts, params, use_tqdm=False)
    full, timings = llm.llm_engine.get_num_unfinished_requests(), []
    while llm.llm_engine.has_unfinished_requests():
        running, start = llm.llm_engine.get_num_unfinished_requests(), time.perf_counter()
        llm.llm_engine.step()
        if running == full:
            timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2]


def measure_sample(config: GenerateConfig, engine_config: EngineConfig, docs: list) -> Measurement:
    """Run the sample through the real shard path on one engine in this process, then time decode steps at the
    batch sizes the real run will have."""
    from megadoc.preprocess.generate.engine import Engine
    from megadoc.preprocess.generate.prompts import load_prompt
    from megadoc.preprocess.generate.requests import chunk_requests

    start = time.perf_counter()
    engine = Engine(engine_config)
    startup = time.perf_counter() - start
    llm = engine.llm
    template = load_prompt(config.prompt, config.kind)
    requests, _ = chunk_requests(engine, config.kind, config.g, template, docs, engine.max_model_len - config.max_tokens)
    prompt_tokens = sum(len(r.prompt_ids) for r in requests)
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests],
                 replace(config.sampling(), max_tokens=1).vllm(), use_tqdm=False)
    prefill = (time.perf_counter() - start) / max(prompt_tokens, 1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "sample.jsonl")
        corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
        sample = replace(config, inputs=[str(corpus)], output=str(Path(tmp, "out")), num_shards=1, shard_index=0,
                         exclude_ids=None, limit=None, chunk_docs=len(docs))
        summary = run_generate(sample, engine_config, engine=engine)
        rows = list(iter_rows(sample.output))
    drops = sum(v for k, v in summary.items() if k.startswith("drop:"))
    lengths = [row["completion_tokens"] for row in rows]
    lengths += [round(summary["completion_tokens"] / max(len(lengths) + drops, 1))] * drops
    slots = _slots(llm, config, prompt_tokens / len(requests), sum(lengths) / max(len(lengths), 1))
    low, high = max(slots // 4, 1), slots
    t_low, t_high = (_probe_step(llm, requests, config.sampling(), b) for b in (low, high))
    c = max((t_high - t_low) / (high - low), 0.0) if high > low else 0.0
    if t_high - c * high < 0:  # steeper than proportional (noise): through the full batch's point and zero
        c = t_high / high
    return Measurement(source=f"a sample of {len(docs)} documents", docs=len(docs), prompt_tokens=prompt_tokens,
                       lengths=lengths, startup_seconds=startup, prefill_seconds_per_token=prefill,
                       step=(t_high - c * high, c), max_num_seqs=slots, kept_texts=[row["text"] for row in rows])


def _slots(llm, config: GenerateConfig, prompt_per_request: float, mean_length: float) -> int:
    """Samples an engine runs at once: its max_num_seqs, or fewer when their KV cache does not fit (a rephrase's
    G samples share its prompt's cache; a rationale's request holds its own)."""
    vllm_config = llm.llm_engine.vllm_config
    kv_tokens = vllm_config.cache_config.num_gpu_blocks * vllm_config.cache_config.block_size
    per_sample = prompt_per_request / config.sampling().n + mean_length
    return max(min(vllm_config.scheduler_config.max_num_seqs, int(kv_tokens / per_sample)), 1)


def measure_manifests(config: GenerateConfig) -> Measurement | None:
    """The figures of the run's own committed chunks, when its output directory holds some made the same way."""
    runs, texts, lengths = [], [], []
    for path in sorted(Path(config.output).glob(f"shard-*-of-{config.num_shards:05d}/{MANIFEST}")):
        manifest = read_manifest(path)
        params = manifest["params"]
        if (params["kind"], params["g"], params["max_tokens"]) != (config.kind, config.g, config.max_tokens):
            continue
        runs += [run for run in manifest.get("runs", []) if run["docs"] and run["backend"] != "Endpoint"]
    if not runs:
        return None
    for row in iter_rows(config.output, config.kind):
        texts.append(row["text"])
        lengths.append(row["completion_tokens"])
    docs = sum(run["docs"] for run in runs)
    return Measurement(source=f"{len(runs)} earlier run(s) in {config.output} ({docs} documents)", docs=docs,
                       prompt_tokens=sum(run["prompt_tokens"] for run in runs), lengths=lengths,
                       startup_seconds=sum(run["startup_seconds"] for run in runs) / len(runs),
                       seconds_per_doc=sum(run["seconds"] * run["engines"] for run in runs) / docs, kept_texts=texts)


# ---------------------------------------------------------------------------------------------------- predicting


def decode_seconds(lengths: list[int], sequences: int, slots: int, step: tuple[float, float]) -> float:
    """Seconds to decode `sequences` samples (lengths cycling through `lengths`), `slots` at a time, under
    continuous batching: a finished sample's slot takes the next one, and a step costs a + c x running samples."""
    a, c = step
    if not lengths or sequences == 0:
        return 0.0
    if sequences > STEADY_STATE_SEQUENCES:
        mean = sum(lengths) / len(lengths)
        return sequences * mean / slots * (a + c * slots)
    ends: list[int] = []
    started, now, seconds = 0, 0, 0.0
    while started < min(slots, sequences):
        heapq.heappush(ends, lengths[started % len(lengths)])
        started += 1
    while ends:
        end = ends[0]
        seconds += (end - now) * (a + c * len(ends))
        now = end
        while ends and ends[0] == now:
            heapq.heappop(ends)
            if started < sequences:
                heapq.heappush(ends, now + max(lengths[started % len(lengths)], 1))
                started += 1
    return seconds


@dataclass
class Estimate:
    """The figures `megadoc generate estimate` prints (and writes with --json)."""

    documents: int
    documents_exact: bool
    corpus_bytes: int
    prompt_tokens: int
    output_tokens: int
    engines: int
    gpus: int
    wall_seconds: float
    startup_seconds: float
    gpu_hours: float
    output_tokens_per_second: float
    generated_tokens_kept: int
    real_tokens: int
    stream_tokens: int
    measured_on: str


def predict(config: GenerateConfig, measurement: Measurement, documents: int, gpus: int, tensor_parallel: int,
            count_tokens) -> dict:
    """The whole corpus on `gpus` GPUs (gpus / tensor_parallel engines, documents split evenly between them)."""
    engines = max(gpus // tensor_parallel, 1)
    per_engine = -(-documents // engines)
    samples_per_doc = len(measurement.lengths) / max(measurement.docs, 1)
    if measurement.seconds_per_doc is not None:
        work = per_engine * measurement.seconds_per_doc
    else:
        prompt_per_doc = measurement.prompt_tokens / measurement.docs
        work = per_engine * prompt_per_doc * measurement.prefill_seconds_per_token + decode_seconds(
            measurement.lengths, round(per_engine * samples_per_doc), measurement.max_num_seqs, measurement.step)
    wall = measurement.startup_seconds + work
    output_per_doc = sum(measurement.lengths) / measurement.docs
    kept_per_doc = count_tokens(measurement.kept_texts) / measurement.docs
    return {"engines": engines, "gpus": gpus, "wall_seconds": wall, "startup_seconds": measurement.startup_seconds,
            "gpu_hours": wall * gpus / 3600, "prompt_tokens": round(documents * measurement.prompt_tokens
                                                                    / measurement.docs),
            "output_tokens": round(documents * output_per_doc),
            "output_tokens_per_second": documents * output_per_doc / max(work * engines, 1e-9),
            "generated_tokens_kept": round(documents * kept_per_doc)}


def estimate(config: GenerateConfig, engine_config: EngineConfig, sample_docs: int, gpus: int,
             count_tokens=None, resample: bool = False) -> Estimate:
    exclude = load_exclude_ids(config.exclude_ids) if config.exclude_ids else frozenset()
    documents, exact = count_records(config.inputs)
    documents = max(documents - len(exclude), 0)
    engine_config = resolve_model(engine_config)
    docs = sample_documents(config, sample_docs, exclude)
    measurement = None if resample else measure_manifests(config)
    measurement = measurement or measure_sample(config, engine_config, docs)
    if count_tokens is None:
        from megadoc.preprocess.generate.engine import PromptTokenizer

        tokenizer = PromptTokenizer.load(engine_config)
        count_tokens = lambda texts: sum(tokenizer.count(text) for text in texts)  # noqa: E731
    figures = predict(config, measurement, documents, gpus, engine_config.tensor_parallel_size, count_tokens)
    real = round(documents * count_tokens([d.text for d in docs]) / len(docs))
    return Estimate(documents=documents, documents_exact=exact and not exclude,
                    corpus_bytes=sum(f.size for f in corpus_layout(config.inputs)), real_tokens=real,
                    stream_tokens=figures["generated_tokens_kept"] + real, measured_on=measurement.source, **figures)


def report(config: GenerateConfig, model: str, result: Estimate) -> str:
    """The estimate in a few lines."""
    def duration(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
            else f"{seconds:.0f} s"

    stream = ("simple / stitched: the kept rephrases plus one real copy" if config.kind == "rephrase" else
              "stretched: the real document with its kept rationales")
    return "\n".join([
        f"megadoc generate estimate {config.kind}: {os.path.basename(model.rstrip('/'))}, G={config.g}, "
        f"max_tokens {config.max_tokens} (measured on {result.measured_on})",
        f"  corpus: {result.documents:,} documents ({'counted' if result.documents_exact else 'estimated'}), "
        f"{result.corpus_bytes:,} bytes",
        f"  tokens: {result.prompt_tokens:,} prompt, {result.output_tokens:,} output",
        f"  on {result.gpus} GPU(s), {result.engines} engine(s): wall {duration(result.wall_seconds)} (start-up "
        f"{duration(result.startup_seconds)}), {result.gpu_hours:,.2f} GPU-hours, "
        f"{result.output_tokens_per_second:,.0f} output tokens/s per engine",
        f"  synthetic stream ({stream}): {result.stream_tokens:,} tokens = {result.generated_tokens_kept:,} "
        f"generated + {result.real_tokens:,} real"])
