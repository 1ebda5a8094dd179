"""Endpoint mode: the shard's requests sent to OpenAI-compatible servers (`vllm serve` or any such), instead of an
engine of our own.

The same prompts (rendered and fitted here with the model's tokenizer, sent as token ids to /v1/completions; or as
the fitted chat messages to /v1/chat/completions with `--endpoint-api chat`), the same n=G and sampling parameters,
the same shard format and resume. At most `--max-concurrency` requests are in flight per URL, several URLs share
the work, and a request that meets a 429, a 5xx, a refused connection or a timeout is retried (on the next URL)
with exponential backoff, so a server restarted mid-run only delays the shard. The API key is read from an
environment variable (`--api-key-env`) when a run starts; it is sent in the Authorization header and never written
anywhere. Servers pick their own seeds: an endpoint run is not reproducible the way a seeded engine is.
"""

import argparse
import itertools
import json
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Iterator

from megadoc.errors import MegadocError
from megadoc.preprocess.generate.backends import Chunk, Completion, Sampling
from megadoc.preprocess.generate.engine import EngineConfig, PromptTokenizer, model_context

RETRY_STATUS = (408, 429, 500, 502, 503, 504)
"""HTTP statuses worth another try: overload, a server restarting or a proxy in between."""
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class EndpointConfig:
    """OpenAI-compatible servers to send a run's requests to."""

    urls: list[str]
    """base URLs, e.g. http://node17:8000 (with or without /v1)"""
    api: str = "completions"
    """'completions' (token-id prompts: exactly the prompts an engine gets) or 'chat' (the fitted messages)"""
    max_concurrency: int = 64
    """requests in flight per URL"""
    max_retries: int = 10
    """further tries of a failed request (429, 5xx, refused, timeout), backing off 0.5 s doubling to 30 s"""
    request_timeout: float = 900.0
    """seconds one request may take"""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key (none when unset)"""

    def __post_init__(self):
        if self.api not in ("completions", "chat"):
            raise MegadocError(f"--endpoint-api must be completions or chat, got {self.api!r}")
        for name in ("max_concurrency", "request_timeout"):
            if getattr(self, name) <= 0:
                raise MegadocError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise MegadocError(f"--max-retries must be >= 0, got {self.max_retries}")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise MegadocError(f"--endpoint {url}: expected an http:// or https:// URL")


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("endpoint mode (instead of engines of our own)")
    group.add_argument("--endpoint", nargs="+", default=None, metavar="URL",
                       help="OpenAI-compatible servers (e.g. a `vllm serve` of --model) to send the requests to")
    group.add_argument("--endpoint-api", choices=("completions", "chat"), default="completions",
                       help="completions: token-id prompts, exactly what an engine gets (vLLM servers); chat: the "
                            "fitted messages (any server)")
    group.add_argument("--max-concurrency", type=int, default=EndpointConfig.max_concurrency,
                       help="requests in flight per URL")
    group.add_argument("--max-retries", type=int, default=EndpointConfig.max_retries,
                       help="further tries of a request that met a 429, a 5xx, a refused connection or a timeout")
    group.add_argument("--request-timeout", type=float, default=EndpointConfig.request_timeout,
                       help="seconds one request may take")
    group.add_argument("--api-key-env", default=EndpointConfig.api_key_env,
                       help="environment variable holding the API key (never written anywhere)")


def endpoint_config_from_args(args) -> EndpointConfig | None:
    if not args.endpoint:
        return None
    return EndpointConfig(urls=args.endpoint, api=args.endpoint_api, max_concurrency=args.max_concurrency,
                          max_retries=args.max_retries, request_timeout=args.request_timeout,
                          api_key_env=args.api_key_env)


class _Retry(Exception):
    """A failure worth another try."""


class Endpoint:
    """The Backend of endpoint mode."""

    startup_seconds = 0.0

    def __init__(self, config: EndpointConfig, engine: EngineConfig):
        self.config = config
        self.engines = len(config.urls)
        self._bases = [url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") for url in config.urls]
        self._key = os.environ.get(config.api_key_env) or None
        self._next_url = itertools.count()
        self._tokenizer = PromptTokenizer.load(engine) if config.api == "completions" else None
        start = time.perf_counter()
        self.model, served_context = self._served_model(engine.model)
        self.startup_seconds = time.perf_counter() - start
        self.max_model_len = served_context or model_context(engine.model, engine.max_model_len)
        self._jobs: queue.Queue = queue.Queue()
        for _ in range(config.max_concurrency * len(config.urls)):
            threading.Thread(target=self._work, daemon=True, name="megadoc-endpoint").start()

    # -------------------------------------------------------------------------------------------- HTTP

    def _call(self, path: str, body: dict | None = None) -> dict:
        """One request, tried on the URLs in turn with backoff until it succeeds or the retries run out."""
        first = next(self._next_url)
        error: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            base = self._bases[(first + attempt) % len(self._bases)]
            try:
                return self._http(base + path, body)
            except _Retry as retry:
                error = retry
                time.sleep(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0))
        raise MegadocError(f"endpoint: gave up after {self.config.max_retries + 1} tries ({error})")

    def _http(self, url: str, body: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                         headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.request_timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            message = _error_message(error)
            if error.code in RETRY_STATUS:
                raise _Retry(f"{url}: HTTP {error.code} {message}") from None
            raise MegadocError(f"{url}: HTTP {error.code} {message}") from None
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:  # refused, reset, timed out
            raise _Retry(f"{url}: {getattr(error, 'reason', error)}") from None

    def _served_model(self, model: str) -> tuple[str, int | None]:
        """The id the servers know the model by (and its context): the one they serve, or the one named like
        --model when they serve several."""
        listing = self._call("/models").get("data", [])
        ids = [entry.get("id") for entry in listing]
        chosen = [e for e in listing if e.get("id") in (model, os.path.basename(model))] or \
            (listing if len(listing) == 1 else [])
        if not chosen:
            raise MegadocError(f"endpoint serves {', '.join(map(str, ids)) or 'no model'}; none of them is {model} "
                               "(--model names the served model and its tokenizer)")
        return chosen[0]["id"], chosen[0].get("max_model_len")

    # -------------------------------------------------------------------------------------------- requests

    def _work(self) -> None:
        while True:
            future, body, path = self._jobs.get()
            try:
                future.set_result(self._call(path, body))
            except BaseException as error:  # handed to the shard's loop, which raises it
                future.set_exception(error)

    def _submit(self, request, sampling: Sampling) -> Future:
        body = {"model": self.model, "n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens, "return_token_ids": True}
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        if self.config.api == "chat":
            body["messages"], path = request.messages, "/chat/completions"
        else:
            body["prompt"], path = request.prompt_ids, "/completions"
        future: Future = Future()
        self._jobs.put((future, body, path))
        return future

    def _completions(self, response: dict) -> list[Completion]:
        out = []
        for choice in sorted(response.get("choices", []), key=lambda c: c.get("index", 0)):
            text = (choice["message"]["content"] or "") if "message" in choice else choice.get("text", "")
            ids = choice.get("token_ids")
            tokens = len(ids) if ids is not None else (self._tokenizer.count(text) if self._tokenizer else 0)
            out.append(Completion(text, tokens, choice.get("finish_reason")))
        return out

    def generate(self, chunks: Iterator[Chunk], sampling: Sampling) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        """Keep the servers busy: pull chunks while fewer than max_concurrency x URLs requests are in flight."""
        capacity = self.config.max_concurrency * len(self._bases)
        pending: list[tuple[Chunk, list[Future]]] = []
        chunks = iter(chunks)
        exhausted = False
        while pending or not exhausted:
            in_flight = sum(not f.done() for _, futures in pending for f in futures)
            while not exhausted and (len(pending) < 2 or in_flight < capacity):
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                pending.append((chunk, [self._submit(request, sampling) for request in chunk.requests]))
                in_flight += len(chunk.requests)
            if not pending:
                break
            chunk, futures = pending[0]
            wait(futures, timeout=1.0)  # then look again for room to pull more chunks in
            if all(future.done() for future in futures):
                pending.pop(0)
                yield chunk, [self._completions(future.result()) for future in futures]

    def close(self) -> None:
        """Requests still in flight are left to the daemon threads; the servers are not ours to stop."""


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's message, one line, short."""
    try:
        body = json.loads(error.read() or b"{}")
        message = body.get("message") or body.get("error", {})
        message = message.get("message", "") if isinstance(message, dict) else str(message)
    except (ValueError, AttributeError, OSError):
        message = error.reason
    return " ".join(str(message).split())[:200]
