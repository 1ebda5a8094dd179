"""Engine processes: every GPU of a node busy, and no engine outliving the run.

A node with N GPUs runs N / tensor_parallel_size engines, each in a process of its own that sees only its GPU group
(`CUDA_VISIBLE_DEVICES`; on a CPU, its share of the cores through `VLLM_CPU_OMP_THREADS_BIND`). The process that
reads the corpus keeps them fed: it renders and fits the prompts, hands each engine whole chunks (a few ahead, so
an engine never waits), and commits the results in chunk order. Engines take the next chunk when they are ready,
so a slow engine never holds the others back, and the shard is the same set of rows whatever the number of engines.

Lifetime. Each engine process leads a process group of its own, which vLLM's engine-core process joins. Every exit
of the parent (success, error, Ctrl-C, SIGTERM) kills those groups; a parent killed with -9 cannot, so each engine
process watches a pipe only the parent holds open, and kills its own group the moment the pipe closes (the kernel
closes it when the parent dies, however it dies). Nothing of an engine survives its run.

Quiet by default: an engine process writes vLLM's output to `<output>/logs/<shard>-engine<i>.log` (`--verbose`:
to the terminal); the parent shows one progress bar.
"""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Iterator

from megadoc.errors import MegadocError
from megadoc.preprocess.generate.backends import Chunk, Completion, LocalEngine, Sampling
from megadoc.preprocess.generate.engine import EngineConfig

AHEAD = 3
"""Chunks handed to an engine beyond what it finished: two in its batch, one waiting in its process."""
STOP_GRACE_SECONDS = 20
"""How long a finished engine may take to shut down before its group is killed."""


# ---------------------------------------------------------------------------------------------------- placement


def visible_gpus() -> list[str]:
    """The GPUs this process may use: $CUDA_VISIBLE_DEVICES (set by Slurm), else those nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return [str(i) for i, line in enumerate(l for l in listed.splitlines() if l.startswith("GPU "))]
    return []


def default_engines(tensor_parallel_size: int) -> int:
    """One engine per group of tensor_parallel_size visible GPUs; one without GPUs."""
    return max(len(visible_gpus()) // tensor_parallel_size, 1)


def _cpu_cores() -> list[int]:
    """The cores to divide: $VLLM_CPU_OMP_THREADS_BIND when the user set a list, else this process's affinity."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind in ("auto", "nobind"):
        return sorted(os.sched_getaffinity(0))
    cores: list[int] = []
    for part in bind.replace("|", ",").split(","):
        first, _, last = part.partition("-")
        cores += list(range(int(first), int(last or first) + 1))
    return cores


def engine_environments(engines: int, tensor_parallel_size: int) -> list[dict[str, str]]:
    """Per engine, the environment that gives it its own GPUs (or cores)."""
    gpus = visible_gpus()
    if gpus:
        if engines * tensor_parallel_size > len(gpus):
            raise MegadocError(f"--engines {engines} x --tensor-parallel-size {tensor_parallel_size} needs "
                               f"{engines * tensor_parallel_size} GPUs; {len(gpus)} are visible ({','.join(gpus)})")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[e * tensor_parallel_size:(e + 1) * tensor_parallel_size])}
                for e in range(engines)]
    if engines == 1:  # vLLM's own placement (or the user's binding) as it is
        return [{}]
    cores = _cpu_cores()
    if engines * tensor_parallel_size > len(cores):
        raise MegadocError(f"--engines {engines} on a CPU needs at least {engines * tensor_parallel_size} cores; "
                           f"{len(cores)} are available")
    groups = [cores[len(cores) * e // engines:len(cores) * (e + 1) // engines] for e in range(engines)]
    return [{"VLLM_CPU_OMP_THREADS_BIND": "|".join(
        ",".join(map(str, group[len(group) * r // tensor_parallel_size:len(group) * (r + 1) // tensor_parallel_size]))
        for r in range(tensor_parallel_size))} for group in groups]


# ---------------------------------------------------------------------------------------------------- parent side


class _Worker:
    """One engine process as the parent sees it."""

    def __init__(self, index: int, env: dict[str, str], log: Path | None, death_fd: int):
        self.index, self.log = index, log
        parent_end, child_end = socket.socketpair()
        out = open(log, "ab") if log else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "megadoc.preprocess.generate.workers", str(child_end.fileno()), str(death_fd)],
                pass_fds=(child_end.fileno(), death_fd), start_new_session=True, env={**os.environ, **env},
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        finally:
            child_end.close()
            if out:
                out.close()
        self.conn = Connection(parent_end.detach())
        self.ready = False
        self.sent: list[int] = []
        """chunk numbers handed over and not yet returned"""
        self.ended = False
        """told that no more chunks come: it finishes what it holds, then exits"""

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            try:
                self.conn.send(None)
            except OSError:
                pass

    def failure(self, message: str | None = None) -> MegadocError:
        code = self.process.poll()
        what = message or (f"exited with code {code}" if code is not None else "stopped answering")
        return MegadocError(f"engine process {self.index}: {what}" + (f" (its log: {self.log})" if self.log else ""))

    def kill(self) -> None:
        """Its whole process group (vLLM's engine core included), then reap it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if not self.conn.closed:
            self.conn.close()


class EngineProcesses:
    """`engines` vLLM engines in processes of their own, each on its own GPUs (or cores), fed whole chunks."""

    def __init__(self, config: EngineConfig, engines: int, log_prefix: Path | None):
        self.engines = engines
        self._finished = False
        self._death_read, self._death_write = os.pipe()  # the parent's end never reaches a child (not inheritable)
        self._workers: list[_Worker] = []
        start = time.perf_counter()
        try:
            for index, env in enumerate(engine_environments(engines, config.tensor_parallel_size)):
                log = Path(f"{log_prefix}-engine{index}.log") if log_prefix else None
                self._workers.append(_Worker(index, env, log, self._death_read))
                self._workers[-1].conn.send(("start", config))
        except BaseException:
            self.close()
            raise
        os.close(self._death_read)
        self._death_read = None
        self.max_model_len = self._first_ready()
        self.startup_seconds = time.perf_counter() - start

    def _first_ready(self) -> int:
        while not any(w.ready for w in self._workers):
            for _ in self._receive():  # nothing but "ready" is sent before any chunk
                pass
        return next(w for w in self._workers if w.ready).max_model_len

    def _receive(self) -> Iterator[tuple[_Worker, tuple]]:
        """Messages of the engines that answered; an engine's error, or its death with work in hand, raises."""
        conns = {w.conn: w for w in self._workers if not w.conn.closed}
        for conn in wait(list(conns)):
            worker = conns[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if worker.ended and not worker.sent:  # done, and gone as told
                    conn.close()
                    continue
                raise worker.failure() from None
            if message[0] == "error":
                raise worker.failure(message[1])
            if message[0] == "ready":
                worker.ready, worker.max_model_len = True, message[1]
                continue
            yield worker, message

    def generate(self, chunks: Iterator[Chunk], sampling: Sampling) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        waiting: dict[int, Chunk] = {}
        done: dict[int, list] = {}
        chunks = iter(chunks)
        exhausted = False
        next_out = None
        for worker in self._workers:
            worker.conn.send(("sampling", sampling))
        while True:
            for worker in self._workers:  # keep every ready engine AHEAD chunks in hand
                while worker.ready and not exhausted and len(worker.sent) < AHEAD:
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        for each in self._workers:  # an engine waits for a next chunk or the word that none comes
                            each.end()
                        break
                    next_out = chunk.number if next_out is None else next_out
                    waiting[chunk.number] = chunk
                    worker.conn.send(("chunk", chunk.number, [r.prompt_ids for r in chunk.requests]))
                    worker.sent.append(chunk.number)
            while next_out in done:
                yield waiting.pop(next_out), done.pop(next_out)
                next_out += 1
            if exhausted and not waiting:
                self._finished = True
                return
            for worker, (_, number, completions) in self._receive():
                worker.sent.remove(number)
                done[number] = [[Completion(*c) for c in request] for request in completions]

    def close(self) -> None:
        """Kill every engine's process group; after a finished run, first let the engines end on their own."""
        if self._death_read is not None:
            os.close(self._death_read)
            self._death_read = None
        deadline = time.monotonic() + (STOP_GRACE_SECONDS if self._finished else 0)
        for worker in self._workers:
            worker.end()
        for worker in self._workers:
            if worker.ready:  # one still starting had nothing to do
                try:
                    worker.process.wait(timeout=max(deadline - time.monotonic(), 0))
                except subprocess.TimeoutExpired:
                    pass
            worker.kill()
        if self._death_write is not None:
            os.close(self._death_write)
            self._death_write = None


# ---------------------------------------------------------------------------------------------------- engine side


def _die_with_parent(death_fd: int) -> None:
    """Kill this process group (vLLM's engine core with it) when the parent's end of the pipe closes."""
    def watch() -> None:
        try:
            os.read(death_fd, 1)
        finally:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="megadoc-parent-watch").start()


def _serve(conn: Connection) -> None:
    """Build the engine, say ready, then generate the chunks the parent sends until it sends None."""
    import traceback

    try:
        _, config = conn.recv()
        from megadoc.preprocess.generate.engine import Engine

        engine = Engine(config)
    except BaseException as error:  # the log holds the trace; the parent prints one line
        traceback.print_exc()
        conn.send(("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))
        return
    conn.send(("ready", engine.max_model_len))
    inbox: queue.Queue = queue.Queue()

    def receive() -> None:  # read ahead, so the engine never waits on the parent
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None
            inbox.put(message)
            if message is None:
                return

    threading.Thread(target=receive, daemon=True, name="megadoc-inbox").start()

    def chunks() -> Iterator[Chunk]:
        from megadoc.preprocess.generate.requests import Request

        while (message := inbox.get()) is not None:
            _, number, prompts = message
            yield Chunk(number, [], [Request("", 0, [], ids, False) for ids in prompts])

    try:
        message = inbox.get()
        if message is None:
            return
        for chunk, completions in LocalEngine(engine).generate(chunks(), message[1]):
            conn.send(("done", chunk.number, [[(c.text, c.tokens, c.finish_reason) for c in request]
                                              for request in completions]))
    except BaseException as error:
        traceback.print_exc()
        conn.send(("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))


def main() -> None:
    conn_fd, death_fd = map(int, sys.argv[1:3])
    _die_with_parent(death_fd)
    conn = Connection(conn_fd)
    try:
        _serve(conn)
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.killpg(os.getpgrp(), signal.SIGKILL)  # this process and vLLM's engine core: nothing of it lingers


if __name__ == "__main__":
    main()
