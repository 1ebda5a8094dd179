"""One shard of `megadoc generate`: its share of the corpus, in chunks, through a backend, into committed Parquet.

Shard i of K reads only share i of K of the corpus (`megadoc.preprocess.corpus`: a byte range of the corpus's files
laid end to end), so K array tasks read the corpus about once between them, and writes its documents in chunks of
`chunk_docs` (`shards` says how a chunk commits). The backend is one vLLM engine per GPU group of this node
(`workers`), OpenAI-compatible endpoints (`endpoint`), or an engine the caller passes; whichever it is, chunks
commit in order, so a re-run skips the documents of listed chunks and goes on: a kill at any point leaves neither
duplicates nor gaps, and the rows are the same set whatever the number of engines.

A shard knows what it was made from: the directory's parameters (model, prompt, sampling, seed, shard count, the
corpus's files and sizes, the excluded ids), a hash of each chunk's documents, and, once complete, a hash of its
whole share. Documents appended to the corpus, a corpus changed in place, or another --seed is refused in one line
instead of being mixed into the shard.
"""

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import CorpusFile, Document, corpus_layout, iter_documents, share_bounds
from megadoc.preprocess.generate.backends import Backend, Chunk, Completion, LocalEngine, Sampling
from megadoc.preprocess.generate.engine import EngineConfig, PromptTokenizer, model_context, resolve_model
from megadoc.preprocess.generate.postprocess import drop_reason, strip_preamble
from megadoc.preprocess.generate.prompts import DEFAULT_PROMPTS, PromptTemplate, load_prompt
from megadoc.preprocess.generate.requests import chunk_requests, check_template_fits
from megadoc.preprocess.generate.shards import (KINDS, check_directory, commit_chunk, open_shard, shard_dir,
                                                shard_lock, shard_summary, write_manifest)

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
    """K: the corpus is split into K shares, one shard each"""
    shard_index: int = 0
    """which shard this process writes (0..K-1)"""
    chunk_docs: int = 64
    """documents per committed chunk: a kill loses at most the chunks in the engines"""
    exclude_ids: str | None = None
    """file of document ids to drop (one per line, or a JSON list), e.g. the held-out sets of `megadoc split`"""
    limit: int | None = None
    """stop after this many documents of the shard (smoke runs)"""
    engines: int | None = None
    """engine processes on this node, each on tensor_parallel_size GPUs of its own (None: the visible GPUs /
    tensor_parallel_size, 1 without GPUs)"""
    verbose: bool = False
    """engine output to the terminal instead of <output>/logs/"""

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
        if self.engines is not None and self.engines < 1:
            raise MegadocError(f"--engines must be >= 1, got {self.engines}")

    @property
    def share(self) -> tuple[int, int]:
        return self.shard_index, self.num_shards

    def sampling(self) -> Sampling:
        """One request per document sampled G times (rephrase), or one sample per split point (rationale)."""
        return Sampling(n=self.g if self.kind == "rephrase" else 1, temperature=self.temperature, top_p=self.top_p,
                        max_tokens=self.max_tokens)


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


def _doc_hash(digest, doc: Document) -> None:
    digest.update(doc.id.encode("utf-8", "surrogatepass") + b"\0" + doc.text.encode("utf-8", "surrogatepass") + b"\0")


class ShardDocuments:
    """This shard's documents in corpus order, minus excluded ids and repeated ids (both counted), while hashing
    every record of the share (the shard's input fingerprint) and counting the bytes read."""

    def __init__(self, config: GenerateConfig, excluded: frozenset[str]):
        self.counts: Counter = Counter()
        self.stats: Counter = Counter()
        self.digest = hashlib.sha1()
        self.records = 0
        self._docs = self._read(config, excluded)

    def _read(self, config: GenerateConfig, excluded: frozenset[str]) -> Iterator[Document]:
        seen: set[str] = set()
        for doc in iter_documents(config.inputs, config.json_key, config.share, self.stats):
            _doc_hash(self.digest, doc)
            self.records += 1
            if doc.id in excluded:
                self.counts["excluded_docs"] += 1
            elif doc.id in seen:
                self.counts["duplicate_id_docs"] += 1
            else:
                seen.add(doc.id)
                yield doc

    def __iter__(self):
        return self._docs

    def __next__(self) -> Document:
        return next(self._docs)

    @property
    def input(self) -> dict:
        return {"records": self.records, "sha1": self.digest.hexdigest()}


def params_of(config: GenerateConfig, template: PromptTemplate, engine: EngineConfig, layout: list[CorpusFile],
              exclude: frozenset[str], seeded: bool) -> dict:
    """Everything that decides what a directory holds; a directory never mixes two of these. Paths are resolved,
    so the same run started from another working directory is the same run."""
    return {
        "kind": config.kind, "model": engine.model, "prompt": asdict(template), "g": config.g,
        "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
        "num_shards": config.num_shards, "chunk_docs": config.chunk_docs, "json_key": config.json_key,
        "corpus": [[os.path.realpath(f.path), f.size] for f in layout],
        "exclude_ids_sha1": hashlib.sha1("\n".join(sorted(exclude)).encode()).hexdigest(),
        "seed": engine.seed if seeded else None,
    }


# ---------------------------------------------------------------------------------------------------- chunks


def chunk_rows(model: str, config: GenerateConfig, chunk: Chunk, completions: list[list[Completion]],
               phash: str) -> list[dict]:
    """Post-processed rows of a chunk's completions; adds tokens and drops by reason to the chunk's counts."""
    rows, counts = [], chunk.counts
    for request, samples in zip(chunk.requests, completions):
        counts["prompt_tokens"] += len(request.prompt_ids)
        for k, sample in enumerate(samples):
            counts["completion_tokens"] += sample.tokens
            text = strip_preamble(sample.text)
            reason = drop_reason(text)
            if reason:
                counts[f"drop:{reason}"] += 1
                continue
            rows.append({"doc_id": request.doc_id, "kind": config.kind, "index": request.index + k, "text": text,
                         "split_offset": request.split_offset, "prompt_tokens": len(request.prompt_ids),
                         "completion_tokens": sample.tokens, "finish_reason": sample.finish_reason,
                         "model": model, "params_hash": phash, "truncated": request.truncated})
    counts["generations"] += len(rows)
    return rows


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks_hash(docs: list[Document]) -> str:
    digest = hashlib.sha1()
    for doc in docs:
        _doc_hash(digest, doc)
    return digest.hexdigest()


def _skip_done(docs: Iterator[Document], manifest: dict, where: Path) -> Document | None:
    """Read past the documents of committed chunks, checking they are still the ones each chunk was made from;
    returns the last of them."""
    last = None
    for number, chunk in enumerate(manifest["chunks"]):
        batch = [doc for _, doc in zip(range(chunk["docs"]), docs)]
        if len(batch) < chunk["docs"] or _chunks_hash(batch) != chunk["docs_sha1"]:
            raise MegadocError(f"{where}: the corpus changed in place since this shard was started (chunk {number}'s "
                               "documents differ); use a new --output")
        last = batch[-1]
    return last


# ---------------------------------------------------------------------------------------------------- a shard


def run_generate(config: GenerateConfig, engine_config: EngineConfig, engine=None, endpoint=None) -> dict:
    """Generate (or finish) one shard; returns its summary counts. `engine` (an `engine.Engine`) runs it in this
    process; `endpoint` (an `endpoint.EndpointConfig`) at OpenAI-compatible servers; neither: engine processes."""
    template = load_prompt(config.prompt, config.kind)
    layout = corpus_layout(config.inputs)  # a missing corpus fails before any engine starts
    exclude = load_exclude_ids(config.exclude_ids) if config.exclude_ids else frozenset()
    engine_config = resolve_model(engine_config)
    tokenizer = engine if engine is not None else PromptTokenizer.load(engine_config)
    _check_context(config, engine.max_model_len if engine is not None else
                   model_context(engine_config.model, engine_config.max_model_len), engine_config.model, tokenizer,
                   template)
    params = params_of(config, template, engine_config, layout, exclude, seeded=endpoint is None)
    check_directory(config.output, params)
    directory = shard_dir(config.output, config.shard_index, config.num_shards)
    with shard_lock(directory):
        manifest = open_shard(directory, params)
        docs = ShardDocuments(config, exclude)
        last = _skip_done(docs, manifest, directory)
        summary = {}
        if not manifest["complete"]:
            backend = _backend(config, engine_config, engine, endpoint, directory)
            try:
                _check_context(config, backend.max_model_len, engine_config.model, tokenizer, template)
                summary = _run_chunks(backend, config, template, tokenizer, manifest, directory, docs, last,
                                      backend.max_model_len - config.max_tokens, engine_config.model)
            finally:
                backend.close()
        for _ in docs:  # finish counting exclusions / duplicates (and hashing) over the whole share
            pass
        if manifest["complete"] and manifest.get("input", docs.input) != docs.input:
            raise MegadocError(f"{directory}: the corpus changed in place since this shard was completed (its share "
                               "holds other documents now); use a new --output")
        manifest["complete"] = config.limit is None
        manifest["counts"] = {key: docs.counts[key] for key in ("excluded_docs", "duplicate_id_docs")}
        if manifest["complete"]:
            manifest["input"] = docs.input
        write_manifest(directory, manifest)
    total = sum(f.size for f in layout)
    return {**shard_summary(manifest), **summary, "bytes_read": docs.stats["bytes_read"], "corpus_bytes": total}


def _check_context(config: GenerateConfig, context: int | None, model: str, tokenizer, template) -> None:
    if context is None:
        return
    if config.max_tokens >= context:
        raise MegadocError(f"--max-tokens {config.max_tokens} does not fit the context of {model} "
                           f"({context} tokens, prompt included); lower it or raise --max-model-len")
    check_template_fits(tokenizer, template, context - config.max_tokens)


def _backend(config: GenerateConfig, engine_config: EngineConfig, engine, endpoint, directory: Path) -> Backend:
    if engine is not None:
        return LocalEngine(engine)
    if endpoint is not None:
        from megadoc.preprocess.generate.endpoint import Endpoint

        return Endpoint(endpoint, engine_config)
    from megadoc.preprocess.generate.workers import EngineProcesses, default_engines

    engines = config.engines or default_engines(engine_config.tensor_parallel_size)
    logs = None if config.verbose else Path(config.output, "logs", directory.name)
    if logs:
        logs.parent.mkdir(parents=True, exist_ok=True)
    return EngineProcesses(engine_config, engines, logs)


def _run_chunks(backend: Backend, config: GenerateConfig, template: PromptTemplate, tokenizer, manifest: dict,
                directory: Path, docs: Iterator[Document], last: Document | None, budget: int, model: str) -> dict:
    """Generate and commit the shard's remaining chunks; one progress bar over the share's bytes."""
    from tqdm import tqdm

    done = sum(chunk["docs"] for chunk in manifest["chunks"])
    if config.limit is not None:
        docs = (doc for _, doc in zip(range(max(config.limit - done, 0)), docs))
    chunks = (Chunk(number, batch, *chunk_requests(tokenizer, config.kind, config.g, template, batch, budget))
              for number, batch in enumerate(_batches(docs, config.chunk_docs), start=len(manifest["chunks"])))
    lo, hi = share_bounds(sum(size for _, size in manifest["params"]["corpus"]), *config.share)
    run = {"backend": type(backend).__name__, "engines": backend.engines,
           "startup_seconds": round(backend.startup_seconds, 1), "seconds": 0, "docs": 0, "prompt_tokens": 0,
           "completion_tokens": 0}
    manifest.setdefault("runs", []).append(run)
    start = time.perf_counter()
    bar = tqdm(total=hi - lo, initial=(last.anchor - lo) if last else 0, unit="B", unit_scale=True, dynamic_ncols=True,
               desc=f"{config.kind} shard {config.shard_index}/{config.num_shards}",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    with bar:
        for chunk, completions in backend.generate(chunks, config.sampling()):
            rows = chunk_rows(model, config, chunk, completions, manifest["params_hash"])
            entry = {"file": f"chunk-{chunk.number:05d}.parquet", "docs": len(chunk.docs),
                     "first_doc": chunk.docs[0].id, "last_doc": chunk.docs[-1].id,
                     "docs_sha1": _chunks_hash(chunk.docs), "rows": len(rows), **chunk.counts}
            seconds = time.perf_counter() - start
            run.update(seconds=round(seconds, 2), docs=run["docs"] + len(chunk.docs),
                       prompt_tokens=run["prompt_tokens"] + chunk.counts["prompt_tokens"],
                       completion_tokens=run["completion_tokens"] + chunk.counts["completion_tokens"])
            commit_chunk(directory, manifest, rows, entry)
            bar.update(chunk.docs[-1].anchor - lo - bar.n)
            bar.set_postfix_str(f"{run['docs']} docs, {run['docs'] / seconds:.2f} docs/s, "
                                f"{run['completion_tokens'] / seconds:,.0f} output tokens/s", refresh=False)
        if config.limit is None:
            bar.update(bar.total - bar.n)
    return {"engines": backend.engines, "seconds": round(time.perf_counter() - start, 1)}
