"""Where a shard's requests become completions, behind one interface (`Backend.generate`): a vLLM engine in this
process (`LocalEngine`), one engine process per GPU group (`workers.EngineProcesses`), or OpenAI-compatible
servers (`endpoint.Endpoint`).

A backend takes the shard's chunks lazily (each already holds its fitted requests) and yields each chunk with its
completions, in chunk order, so the shard commits chunk after chunk whatever the backend; it pulls the next chunks
while the current ones finish, so a chunk boundary never drains an engine's batch.
"""

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from megadoc.preprocess.corpus import Document
from megadoc.preprocess.generate.requests import Request


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters of every request of a run (vLLM's SamplingParams / the OpenAI request fields)."""

    n: int
    """samples per request (G for rephrases, 1 for a rationale's split point)"""
    temperature: float
    top_p: float
    max_tokens: int
    ignore_eos: bool = False
    """benchmarks only: every sample is max_tokens long, so both sides of a comparison do the same work"""

    def vllm(self):
        from vllm import SamplingParams

        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              ignore_eos=self.ignore_eos)


@dataclass(frozen=True)
class Completion:
    """One sample of one request."""

    text: str
    tokens: int
    """tokens generated"""
    finish_reason: str | None
    """'stop' or 'length'"""


@dataclass
class Chunk:
    """A chunk of a shard: its documents (chunk_docs of them, the last one fewer) and their fitted requests."""

    number: int
    docs: list[Document]
    requests: list[Request]
    counts: Counter = field(default_factory=Counter)
    """counts made while building the requests (documents too short to split, truncated documents)"""


class Backend(Protocol):
    engines: int
    """engines (or endpoints) working at once"""
    max_model_len: int
    """the context the engines run with, prompt included"""
    startup_seconds: float
    """seconds until the first engine could take requests"""

    def generate(self, chunks: Iterator[Chunk], sampling: Sampling) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        """Each chunk with one list of completions per request, in chunk order."""

    def close(self) -> None:
        """Stop every engine (on every exit path: error, interrupt, success)."""


class LocalEngine:
    """One vLLM engine in this process (tests, benchmarks, and each engine process of `workers`)."""

    engines = 1
    startup_seconds = 0.0

    def __init__(self, engine):
        self.engine = engine
        self.max_model_len = engine.max_model_len

    def generate(self, chunks: Iterator[Chunk], sampling: Sampling) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        """The next chunk's requests wait in the engine while the current chunk finishes: with one `LLM.generate`
        per chunk, the last long samples of every chunk ran nearly alone (benchmarks/bench_generate.py, 8
        documents a chunk: 90% of bare vLLM's tokens/s, 97% this way)."""
        llm, params = self.engine.llm, sampling.vllm()
        queued: deque = deque()
        finished: dict = {}

        def enqueue() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                prompts = [{"prompt_token_ids": r.prompt_ids} for r in chunk.requests]
                # enqueue answers vLLM's internal ids ("<id>-<random suffix>"); outputs carry the <id> LLM gave.
                internal = llm.enqueue(prompts, params, use_tqdm=False) if prompts else []
                queued.append((chunk, [i.split("-", 1)[0] for i in internal]))

        enqueue()
        try:
            while queued:
                enqueue()
                chunk, ids = queued[0]
                while any(i not in finished for i in ids):
                    finished.update((o.request_id, o) for o in llm.llm_engine.step() if o.finished)
                queued.popleft()
                outputs = [finished.pop(i) for i in ids]
                yield chunk, [[Completion(c.text, len(c.token_ids), c.finish_reason) for c in o.outputs]
                              for o in outputs]
        finally:  # closed early (an error while committing): leave no request in a shared engine
            unfinished = [i for _, ids in queued for i in ids if i not in finished]
            if unfinished:
                llm.llm_engine.abort_request(unfinished)

    def close(self) -> None:
        """The engine belongs to the caller."""
