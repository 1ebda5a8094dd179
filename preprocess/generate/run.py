"""One shard of `megadoc generate`: the shard's documents, in chunks, through the engine, into committed Parquet.

A shard reads its documents in corpus order and writes them in chunks of `chunk_docs` documents (`shards` says how
a chunk commits). A re-run skips the documents of listed chunks and goes on, so a kill at any point leaves neither
duplicates nor gaps. While a chunk finishes, the next chunk's requests already wait in the engine, so a chunk
boundary never drains the engine's batch.
"""

import hashlib
import json
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import Document, expand_inputs, iter_documents
from megadoc.preprocess.generate.engine import Engine, EngineConfig, model_context, resolve_model
from megadoc.preprocess.generate.postprocess import drop_reason, strip_preamble
from megadoc.preprocess.generate.prompts import DEFAULT_PROMPTS, PromptTemplate, load_prompt
from megadoc.preprocess.generate.requests import Request, chunk_requests
from megadoc.preprocess.generate.shards import (KINDS, check_directory, commit_chunk, open_shard, shard_dir,
                                                shard_of, shard_summary, write_manifest)

DEFAULT_MAX_TOKENS = {"rephrase": 1024, "rationale": 512}


@dataclass(frozen=True)
class GenerateConfig:
    """One `megadoc generate rephrase|rationale` run: one shard of one output directory."""

    kind: str
    """'rephrase' or 'rationale'"""
    inputs: list[str]
    """corpus files / globs"""
    output: str
    """generation directory (one per kind and parameter set)"""
    json_key: str = "text"
    """corpus field holding the document text"""
    prompt: str | None = None
    """a shipped template name (prompts/*.yaml) or a YAML path; None: the kind's default"""
    g: int = 4
    """generations per document (rephrases, or rationales = split points)"""
    temperature: float = 1.0
    """sampling temperature (the paper: 1.0)"""
    top_p: float = 1.0
    """nucleus sampling mass"""
    max_tokens: int | None = None
    """new tokens per generation (None: 1024 for rephrases, 512 for rationales, the paper's)"""
    num_shards: int = 1
    """K: the corpus is split into K shards by document id hash"""
    shard_index: int = 0
    """which shard this process writes (0..K-1)"""
    chunk_docs: int = 64
    """documents per committed chunk: a kill loses at most the two chunks in the engine"""
    exclude_ids: str | None = None
    """file of document ids to drop (one per line, or a JSON list), e.g. the held-out sets of `megadoc split`"""
    limit: int | None = None
    """stop after this many documents of the shard (smoke runs)"""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MegadocError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.g < 1:
            raise MegadocError(f"-G/--generations must be >= 1, got {self.g}")
        if self.max_tokens is None:
            object.__setattr__(self, "max_tokens", DEFAULT_MAX_TOKENS[self.kind])
        if self.prompt is None:
            object.__setattr__(self, "prompt", DEFAULT_PROMPTS[self.kind])
        if self.max_tokens < 1:
            raise MegadocError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise MegadocError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MegadocError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.num_shards < 1:
            raise MegadocError(f"--num-shards must be >= 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise MegadocError(f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}")
        if self.chunk_docs < 1:
            raise MegadocError(f"--chunk-docs must be >= 1, got {self.chunk_docs}")


# ---------------------------------------------------------------------------------------------------- inputs


def load_exclude_ids(path: str) -> frozenset[str]:
    """Document ids from a text file (one per line) or a JSON list."""
    try:
        content = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MegadocError(f"{path}: cannot read the --exclude-ids file ({error})") from None
    if content.lstrip().startswith("["):
        try:
            ids = json.loads(content)
        except json.JSONDecodeError as error:
            raise MegadocError(f"{path}: malformed JSON list of ids ({error})") from None
        return frozenset(str(i) for i in ids)
    return frozenset(line.strip() for line in content.splitlines() if line.strip())


def iter_shard_documents(config: GenerateConfig, excluded: frozenset[str], counts: Counter) -> Iterator[Document]:
    """This shard's documents in corpus order, minus excluded ids and repeated ids (both counted)."""
    seen: set[str] = set()
    for doc in iter_documents(config.inputs, config.json_key):
        if shard_of(doc.id, config.num_shards) != config.shard_index:
            continue
        if doc.id in excluded:
            counts["excluded_docs"] += 1
        elif doc.id in seen:
            counts["duplicate_id_docs"] += 1
        else:
            seen.add(doc.id)
            yield doc


def params_of(config: GenerateConfig, template: PromptTemplate, model: str, exclude: frozenset[str]) -> dict:
    """Everything that decides what a directory holds; a directory never mixes two of these."""
    return {
        "kind": config.kind, "model": model, "prompt": asdict(template), "g": config.g,
        "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
        "num_shards": config.num_shards, "chunk_docs": config.chunk_docs, "json_key": config.json_key,
        "inputs": config.inputs, "exclude_ids_sha1": hashlib.sha1("\n".join(sorted(exclude)).encode()).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------------- chunks


def sampling_params(config: GenerateConfig, n: int):
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens)


def chunk_rows(engine: Engine, config: GenerateConfig, requests: list[Request], outputs: list, counts: Counter,
               phash: str) -> list[dict]:
    """Post-processed rows of a chunk's outputs; adds tokens and drops by reason to `counts`."""
    rows = []
    for request, output in zip(requests, outputs):
        counts["prompt_tokens"] += len(request.prompt_ids)
        for k, completion in enumerate(output.outputs):
            counts["completion_tokens"] += len(completion.token_ids)
            text = strip_preamble(completion.text)
            reason = drop_reason(text)
            if reason:
                counts[f"drop:{reason}"] += 1
                continue
            rows.append({"doc_id": request.doc_id, "kind": config.kind, "index": request.index + k, "text": text,
                         "split_offset": request.split_offset, "prompt_tokens": len(request.prompt_ids),
                         "completion_tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                         "model": engine.model, "params_hash": phash, "truncated": request.truncated})
    counts["generations"] += len(rows)
    return rows


def generate_chunks(engine: Engine, config: GenerateConfig, template: PromptTemplate,
                    batches: Iterator[list[Document]], budget: int, phash: str
                    ) -> Iterator[tuple[list[Document], list[dict], Counter]]:
    """(documents, rows, counts) of each chunk, in order.

    The next chunk's requests wait in the engine while the current chunk finishes, so a chunk boundary never
    drains the engine's batch: with one `LLM.generate` per chunk, the last long samples of every chunk ran
    nearly alone (benchmarks/bench_generate.py, 8 documents a chunk: 90% of bare vLLM's tokens/s, now 97%).
    """
    params = sampling_params(config, config.g if config.kind == "rephrase" else 1)
    batches = iter(batches)
    queued: deque = deque()
    finished: dict = {}

    def enqueue() -> None:
        docs = next(batches, None)
        if docs is not None:
            requests, counts = chunk_requests(engine, config.kind, config.g, template, docs, budget)
            prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests]
            # enqueue answers vLLM's internal ids ("<id>-<random suffix>"); outputs carry the <id> LLM gave.
            internal = engine.llm.enqueue(prompts, params, use_tqdm=False) if prompts else []
            queued.append((docs, requests, counts, [i.split("-", 1)[0] for i in internal]))

    enqueue()
    try:
        while queued:
            enqueue()
            docs, requests, counts, ids = queued[0]
            while any(i not in finished for i in ids):
                finished.update((o.request_id, o) for o in engine.llm.llm_engine.step() if o.finished)
            queued.popleft()
            yield docs, chunk_rows(engine, config, requests, [finished.pop(i) for i in ids], counts, phash), counts
    finally:  # closed early (an error while committing): leave no request in a shared engine
        unfinished = [i for _, _, _, ids in queued for i in ids if i not in finished]
        if unfinished:
            engine.llm.llm_engine.abort_request(unfinished)


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _skip_done(docs: Iterator[Document], manifest: dict, where: Path) -> Iterator[Document]:
    """The documents after those of committed chunks, checking the corpus still has them where they were."""
    done = sum(chunk["docs"] for chunk in manifest["chunks"])
    last = None
    for _ in range(done):
        last = next(docs, None)
        if last is None:
            break
    if done and (last is None or last.id != manifest["chunks"][-1]["last_doc"]):
        raise MegadocError(f"{where}: the corpus changed since this shard was started (document "
                           f"{manifest['chunks'][-1]['last_doc']!r} is no longer its document #{done})")
    return docs


# ---------------------------------------------------------------------------------------------------- a shard


def run_generate(config: GenerateConfig, engine_config: EngineConfig, engine: Engine | None = None) -> dict:
    """Generate (or finish) one shard; returns the shard's summary counts. `engine` lets callers share one."""
    template = load_prompt(config.prompt, config.kind)
    expand_inputs(config.inputs)  # a missing corpus fails before the engine starts
    exclude = load_exclude_ids(config.exclude_ids) if config.exclude_ids else frozenset()
    engine_config = resolve_model(engine_config)
    context = model_context(engine_config.model, engine_config.max_model_len) if engine is None else \
        engine.max_model_len
    _check_context(config, context, engine_config.model)
    params = params_of(config, template, engine_config.model, exclude)
    check_directory(config.output, params)
    directory = shard_dir(config.output, config.shard_index, config.num_shards)
    manifest = open_shard(directory, params)
    counts: Counter = Counter()
    docs = _skip_done(iter_shard_documents(config, exclude, counts), manifest, directory)
    if not manifest["complete"]:
        engine = engine or Engine(engine_config)
        _check_context(config, engine.max_model_len, engine_config.model)
        _run_chunks(engine, config, template, manifest, directory, docs, engine.max_model_len - config.max_tokens)
    for _ in docs:  # finish counting exclusions / duplicates over the whole shard
        pass
    manifest["complete"] = config.limit is None
    manifest["counts"] = {key: counts[key] for key in ("excluded_docs", "duplicate_id_docs")}
    write_manifest(directory, manifest)
    return shard_summary(manifest)


def _check_context(config: GenerateConfig, context: int | None, model: str) -> None:
    if context is not None and config.max_tokens >= context:
        raise MegadocError(f"--max-tokens {config.max_tokens} does not fit the context of {model} "
                           f"({context} tokens, prompt included); lower it or raise --max-model-len")


def _run_chunks(engine: Engine, config: GenerateConfig, template: PromptTemplate, manifest: dict, directory: Path,
                docs: Iterator[Document], budget: int) -> None:
    from tqdm import tqdm

    done = sum(chunk["docs"] for chunk in manifest["chunks"])
    limit = None if config.limit is None else max(config.limit - done, 0)
    if limit is not None:
        docs = (doc for _, doc in zip(range(limit), docs))
    start, tokens = time.perf_counter(), 0
    with tqdm(desc=f"{config.kind} shard {config.shard_index}/{config.num_shards}", unit="doc", total=limit) as bar:
        for batch, rows, counts in generate_chunks(engine, config, template, _batches(docs, config.chunk_docs),
                                                   budget, manifest["params_hash"]):
            entry = {"file": f"chunk-{len(manifest['chunks']):05d}.parquet", "docs": len(batch),
                     "first_doc": batch[0].id, "last_doc": batch[-1].id, "rows": len(rows), **counts}
            commit_chunk(directory, manifest, rows, entry)
            tokens += counts["completion_tokens"]
            bar.update(len(batch))
            bar.set_postfix(gen_tok_s=f"{tokens / (time.perf_counter() - start):.1f}")
