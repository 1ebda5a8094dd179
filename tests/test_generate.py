"""`megadoc generate`: split points, post-processing, sharding, resume, identity, locks, engine processes, the
estimate and bad inputs, on real vLLM (CPU).

vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor): an engine starts in seconds, so the
tiny random Llama can be started afresh where a test needs a fresh seed; the command line runs its engines in
processes of their own, as on a cluster. One SmolLM2 case runs the real model.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from megadoc.cli import main as cli_main  # noqa: E402
from megadoc.errors import MegadocError  # noqa: E402
from megadoc.preprocess.corpus import iter_documents  # noqa: E402
from megadoc.preprocess.generate.engine import Engine, EngineConfig  # noqa: E402
from megadoc.preprocess.generate.postprocess import (boundaries, drop_reason, pieces, split_offsets,  # noqa: E402
                                                     strip_preamble)
from megadoc.preprocess.generate.prompts import load_prompt  # noqa: E402
from megadoc.preprocess.generate.run import GenerateConfig, load_exclude_ids, run_generate  # noqa: E402
from megadoc.preprocess.generate.shards import iter_rows, shard_dir, shard_lock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE40 = ROOT / "tests" / "data" / "dclm_sample40.jsonl"
UNI = {"distributed_executor_backend": "uni"}


def words(text):
    return [m.start() for m in re.finditer(r"\S+", text)]


# ------------------------------------------------------------------------------------------ pure functions

@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_split_offsets_rebuild_and_balance(g):
    for doc in iter_documents([str(SAMPLE40)]):
        starts = words(doc.text)
        offsets = split_offsets(doc.text, starts, g)
        if offsets is None:
            assert len(doc.text.split()) <= g
            continue
        assert len(offsets) == g and offsets == sorted(set(offsets)) and 0 < offsets[0] and offsets[-1] < len(doc.text)
        assert "".join(pieces(doc.text, offsets)) == doc.text
        if len(boundaries(doc.text)) >= 4 * g and len(starts) >= 200:  # enough boundaries to get close
            sizes = [len(words(piece)) for piece in pieces(doc.text, offsets)]
            assert max(sizes) <= 3 * len(starts) / (g + 1), sizes


def test_split_offsets_at_sentence_boundaries():
    text = "One two three. Four five six. Seven eight nine.\n\nTen eleven twelve. Thirteen."
    offsets = split_offsets(text, words(text), 2)
    assert offsets == [text.index("Four"), text.index("Ten")]  # nearest boundaries to 13/3 and 26/3 words
    assert split_offsets("too short", words("too short"), 4) is None
    assert split_offsets("a b c", words("a b c"), 2) == [2, 4]  # word fallback


def test_strip_preamble_and_drops():
    assert strip_preamble("Here is the rephrased article:\n\nThe cat sat.") == "The cat sat."
    assert strip_preamble("Sure! Here's a rewritten version of the document:\nBody.") == "Body."
    assert strip_preamble("Rephrased article: The cat sat.") == "The cat sat."
    assert strip_preamble("The cat sat. Here is why: it was tired.") == "The cat sat. Here is why: it was tired."
    assert drop_reason("   ") == "empty"
    assert drop_reason("the cat sat on the mat " * 20) == "repetitive"
    assert drop_reason(" ".join(f"word{i}" for i in range(100))) is None


def test_prompts_and_exclude_ids(tmp_path):
    for name in ("wikipedia", "qa", "plain"):
        assert "{text}" in load_prompt(name, "rephrase").user
    assert "{suffix}" in load_prompt("latent_thoughts", "rationale").user
    assert load_prompt("wikipedia", "rephrase").messages(text="{x}")[1]["content"].count("{x}") == 1
    with pytest.raises(MegadocError, match="not a 'rephrase'"):
        load_prompt("latent_thoughts", "rephrase")
    bad = tmp_path / "bad.yaml"
    bad.write_text("user: 'no placeholder'\n")
    with pytest.raises(MegadocError, match="lacks"):
        load_prompt(str(bad), "rephrase")
    (tmp_path / "ids.txt").write_text("a\n\n b \n")
    (tmp_path / "ids.json").write_text('["a", 3]')
    assert load_exclude_ids(str(tmp_path / "ids.txt")) == {"a", "b"}
    assert load_exclude_ids(str(tmp_path / "ids.json")) == {"a", "3"}


# ------------------------------------------------------------------------------------------ bad inputs (no engine)

def _cli(*args):
    return cli_main(["generate", *map(str, args)])


def test_bad_inputs(tmp_path, tiny_model, capsys):
    base = ["rephrase", "--output", tmp_path / "out", "--model", tiny_model]
    assert _cli(*base, "--input", tmp_path / "missing.jsonl") == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    (tmp_path / "notamodel").mkdir()
    assert _cli("rephrase", "--output", tmp_path / "o", "--input", SAMPLE40, "--model", tmp_path / "notamodel") == 1
    assert "not a model directory" in capsys.readouterr().err
    assert _cli(*base, "--input", SAMPLE40, "-G", "0") == 1
    assert "-G/--generations must be >= 1" in capsys.readouterr().err
    assert _cli(*base, "--input", SAMPLE40, "--max-tokens", "5000") == 1
    assert "does not fit the context" in capsys.readouterr().err
    assert _cli("status", tmp_path / "nothing") == 1
    assert "not a generation directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real vLLM

@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    return Engine(EngineConfig(model=tiny_model, seed=0, extra=UNI))


def _config(tmp_path, kind="rephrase", **kw):
    kw = {"g": 3, "max_tokens": 16, "chunk_docs": 8, **kw}
    return GenerateConfig(kind=kind, inputs=[str(SAMPLE40)], output=str(tmp_path / kind), **kw)


def test_rephrase_shards_cover_every_document_with_g_generations(tmp_path, tiny_engine, capsys):
    ids = [doc.id for doc in iter_documents([str(SAMPLE40)])]
    (tmp_path / "exclude.txt").write_text(f"{ids[0]}\n{ids[1]}\n")
    summaries = [run_generate(_config(tmp_path, num_shards=2, shard_index=i, exclude_ids=str(tmp_path / "exclude.txt")),
                              EngineConfig(model=tiny_engine.model), engine=tiny_engine) for i in range(2)]
    rows = list(iter_rows(str(tmp_path / "rephrase")))
    keys = Counter((row["doc_id"], row["index"]) for row in rows)
    assert max(keys.values()) == 1  # no duplicates
    drops = sum(v for s in summaries for k, v in s.items() if k.startswith("drop:"))
    assert len(rows) + drops == 3 * 38
    assert {row["doc_id"] for row in rows} <= set(ids[2:])
    assert sum(s["docs"] for s in summaries) == 38 and sum(s["excluded_docs"] for s in summaries) == 2
    assert all(0 <= row["index"] < 3 and row["finish_reason"] in ("stop", "length") for row in rows)
    assert len({row["params_hash"] for row in rows}) == 1
    assert _cli("status", tmp_path / "rephrase") == 0
    assert "2/2 shards complete; documents 38" in capsys.readouterr().out
    with pytest.raises(MegadocError, match="different temperature"):
        run_generate(_config(tmp_path, num_shards=2, temperature=0.5, exclude_ids=str(tmp_path / "exclude.txt")),
                     EngineConfig(model=tiny_engine.model), engine=tiny_engine)


def test_rationale_offsets_rebuild_documents(tmp_path, tiny_engine):
    run_generate(_config(tmp_path, "rationale"), EngineConfig(model=tiny_engine.model), engine=tiny_engine)
    by_doc = {}
    for row in iter_rows(str(tmp_path / "rationale")):
        by_doc.setdefault(row["doc_id"], {})[row["index"]] = row["split_offset"]
    docs = {doc.id: doc.text for doc in iter_documents([str(SAMPLE40)])}
    assert len(by_doc) >= 35
    for doc_id, offsets in by_doc.items():
        text = docs[doc_id]
        expected = split_offsets(text, tiny_engine.token_starts(text), 3)
        assert all(expected[i] == offset for i, offset in offsets.items())
        assert "".join(pieces(text, expected)) == text


def test_resume_skips_committed_chunks_and_removes_uncommitted(tmp_path, tiny_engine):
    first = run_generate(_config(tmp_path, limit=16), EngineConfig(model=tiny_engine.model), engine=tiny_engine)
    assert first["docs"] == 16 and first["chunks"] == 2
    shard = tmp_path / "rephrase" / "shard-00000-of-00001"
    # What a kill between writing a chunk and listing it leaves behind, and a half-written file.
    (shard / "chunk-00002.parquet").write_bytes((shard / "chunk-00000.parquet").read_bytes())
    (shard / "chunk-00003.parquet.tmp").write_bytes(b"partial")
    summary = run_generate(_config(tmp_path), EngineConfig(model=tiny_engine.model), engine=tiny_engine)
    rows = list(iter_rows(str(tmp_path / "rephrase")))
    keys = Counter((row["doc_id"], row["index"]) for row in rows)
    assert max(keys.values()) == 1
    assert summary["docs"] == 40 and len(rows) + sum(v for k, v in summary.items() if k.startswith("drop:")) == 120
    assert not list(shard.glob("*.tmp"))


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie, which PID 1 may never reap here, is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_kill_9_leaves_no_engine_and_the_rerun_completes_without_duplicates(tmp_path, tiny_model, wait_for_chunks):
    out = tmp_path / "gen"
    command = [sys.executable, "-m", "megadoc.cli", "generate", "rephrase", "--input", str(SAMPLE40), "--output",
               str(out), "--model", tiny_model, "-G", "2", "--max-tokens", "64", "--chunk-docs", "2",
               "--engine-arg", "max_num_seqs=2"]
    manifest = out / "shard-00000-of-00001" / "manifest.json"
    # vLLM's own engine-core process too, as on a cluster: the engine process and its child must both go.
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for_chunks(process, out)
    engines = _descendants(process.pid)
    assert len(engines) >= 2, engines  # the engine process and vLLM's engine core (at least)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_alive, engines)):
        time.sleep(0.1)
    assert not [pid for pid in engines if _alive(pid)], "engine processes outlived their parent"
    assert not json.loads(manifest.read_text())["complete"]
    assert subprocess.run(command + ["--engine-arg", "distributed_executor_backend=uni"], capture_output=True
                          ).returncode == 0
    rows = list(iter_rows(str(out)))
    keys = Counter((row["doc_id"], row["index"]) for row in rows)
    drops = sum(v for c in json.loads(manifest.read_text())["chunks"] for k, v in c.items() if k.startswith("drop:"))
    assert max(keys.values()) == 1 and len(rows) + drops == 80


# ------------------------------------------------------------------------------------------ identity, locks, engines


def test_shard_identity_refuses_changed_inputs_and_accepts_other_paths(tmp_path, tiny_engine, monkeypatch):
    corpus = tmp_path / "in" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_bytes(SAMPLE40.read_bytes())
    monkeypatch.chdir(tmp_path)
    base = {"kind": "rephrase", "inputs": ["./in/corpus.jsonl"], "output": "out", "g": 2, "max_tokens": 4,
            "chunk_docs": 16}
    same = EngineConfig(model=tiny_engine.model)
    assert run_generate(GenerateConfig(**base), same, engine=tiny_engine)["docs"] == 40
    # The same run from another working directory, every path spelled differently: the same (finished) shard.
    monkeypatch.chdir(tmp_path / "in")
    other = GenerateConfig(**{**base, "inputs": ["corpus.jsonl"], "output": "../out/"})
    assert run_generate(other, EngineConfig(model=tiny_engine.model + "/"), engine=tiny_engine)["docs"] == 40
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MegadocError, match="made with different seed"):
        run_generate(GenerateConfig(**base), EngineConfig(model=tiny_engine.model, seed=1), engine=tiny_engine)
    text = corpus.read_bytes()
    at = text.index(b" the ")
    corpus.write_bytes(text[:at] + b" THE " + text[at + 5:])  # changed in place, same size
    with pytest.raises(MegadocError, match=r"corpus changed in place since this shard was started \(chunk \d"):
        run_generate(GenerateConfig(**base), same, engine=tiny_engine)
    appended = text + b'{"id": "appended", "text": "A document added after the shard was complete."}\n'
    corpus.write_bytes(appended)
    with pytest.raises(MegadocError, match=rf"the corpus changed since this directory was made \(.*corpus.jsonl: "
                                           rf"{len(text):,} bytes then, {len(appended):,} now\); use a new --output"):
        run_generate(GenerateConfig(**base), same, engine=tiny_engine)


def test_a_second_process_on_a_shard_gets_one_line(tmp_path, tiny_model, capsys):
    out = tmp_path / "out"
    with shard_lock(shard_dir(str(out), 0, 1)):
        code = _cli("rephrase", "--input", SAMPLE40, "--output", out, "--model", tiny_model, "-G", "2", "--max-tokens", "16")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"pid {os.getpid()} on " in err and "is writing this shard" in err


@pytest.mark.parametrize("flags", [["--max-tokens", "64", "--max-model-len", "128"], ["--max-tokens", "8150"]])
def test_a_context_too_small_for_the_template_is_one_line(tmp_path, capsys, flags):
    """No engine starts and nothing hangs: the template alone does not fit (SmolLM2's default context: 8192)."""
    start = time.perf_counter()
    assert _cli("rephrase", "--input", SAMPLE40, "--output", tmp_path / "out", *flags) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the prompt template alone takes" in err, err
    assert not (tmp_path / "out").exists() and time.perf_counter() - start < 60


def test_two_engine_processes_write_the_rows_of_one_engine(tmp_path, tiny_engine):
    """--engines 2 (here two processes on one core each) against one engine in this process: the same rows."""
    kw = {"g": 2, "max_tokens": 8, "chunk_docs": 3}
    one = run_generate(_config(tmp_path, **kw), EngineConfig(model=tiny_engine.model), engine=tiny_engine)
    command = [sys.executable, "-m", "megadoc", "generate", "rephrase", "--input", str(SAMPLE40), "--output",
               str(tmp_path / "two"), "--model", tiny_engine.model, "-G", "2", "--max-tokens", "8", "--chunk-docs", "3",
               "--engines", "2", "--engine-arg", "distributed_executor_backend=uni"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    by_key = [{(r["doc_id"], r["index"]): r["prompt_tokens"] for r in iter_rows(str(d))}
              for d in (tmp_path / "rephrase", tmp_path / "two")]
    assert by_key[0] == by_key[1] and len(by_key[0]) == 80  # every document's G generations, the same prompts
    manifest = json.loads((tmp_path / "two" / "shard-00000-of-00001" / "manifest.json").read_text())
    assert manifest["runs"][-1]["engines"] == 2 and one["docs"] == 40 and manifest["complete"]
    # Quiet: the engines' output went to their logs; the terminal got the bar and the summary.
    logs = sorted((tmp_path / "two" / "logs").glob("*.log"))
    assert [p.name for p in logs] == [f"shard-00000-of-00001-engine{i}.log" for i in range(2)]
    assert all("vllm" in p.read_text().lower() for p in logs)
    assert "INFO" not in result.stderr + result.stdout and "generations 80" in result.stdout


# ------------------------------------------------------------------------------------------ estimate


def test_decode_replay():
    from megadoc.preprocess.generate.estimate import decode_seconds

    assert decode_seconds([2, 2], 2, 2, (1.0, 0.0)) == 2  # both in one batch: two steps
    assert decode_seconds([2, 2], 2, 1, (1.0, 0.0)) == 4  # one at a time
    assert decode_seconds([1, 3], 2, 2, (0.0, 1.0)) == 2 + 2  # a step of 2 sequences, then two of 1


def test_estimate_from_a_finished_run_and_from_a_sample(tmp_path, tiny_engine, capsys):
    flags = ["rephrase", "--input", SAMPLE40, "--output", tmp_path / "rephrase", "--model", tiny_engine.model, "-G",
             "2", "--max-tokens", "16", "--sample-docs", "4", "--gpus", "4", "--engine-arg",
             "distributed_executor_backend=uni"]
    # After a run, its manifests are the measurement (no engine), and they hold the real totals.
    summary = run_generate(_config(tmp_path, g=2, max_tokens=16), EngineConfig(model=tiny_engine.model),
                           engine=tiny_engine)
    assert _cli("estimate", *flags, "--json", tmp_path / "run.json") == 0
    assert "measured on 1 earlier run(s)" in capsys.readouterr().out
    figures = json.loads((tmp_path / "run.json").read_text())
    assert figures["output_tokens"] == summary["completion_tokens"]
    assert figures["prompt_tokens"] == summary["prompt_tokens"]
    # A sample measured by an engine of its own (last: an in-process engine that ends resets vLLM's globals).
    assert _cli("estimate", *flags, "--resample", "--json", tmp_path / "sample.json") == 0
    out = capsys.readouterr().out
    assert "corpus: 40 documents (counted)" in out
    assert re.search(r"measured on a sample of [34] documents", out)  # one from each quarter that has one
    figures = json.loads((tmp_path / "sample.json").read_text())
    assert (figures["documents"], figures["engines"], figures["gpus"]) == (40, 4, 4)
    assert figures["wall_seconds"] > figures["startup_seconds"] > 0
    assert figures["gpu_hours"] == pytest.approx(figures["wall_seconds"] * 4 / 3600)
    assert 0 < figures["output_tokens"] <= 40 * 2 * 16 and figures["prompt_tokens"] > 40 * 50
    assert figures["stream_tokens"] == figures["generated_tokens_kept"] + figures["real_tokens"] > 0


def test_same_seed_same_output(tmp_path, tiny_model):
    texts = []
    for run in range(2):
        engine = Engine(EngineConfig(model=tiny_model, seed=7, extra=UNI))
        run_generate(_config(tmp_path / str(run), limit=8), EngineConfig(model=tiny_model), engine=engine)
        texts.append([(r["doc_id"], r["index"], r["text"]) for r in iter_rows(str(tmp_path / str(run) / "rephrase"))])
        del engine
    assert texts[0] == texts[1] and len(texts[0]) > 0


def test_smollm2_rephrase_and_rationale(tmp_path):
    """The embedded real model, end to end through the CLI defaults (2 documents, short generations)."""
    corpus = tmp_path / "two.jsonl"
    corpus.write_text("".join(line for line in list(open(SAMPLE40))[:2]))
    for kind in ("rephrase", "rationale"):
        assert _cli(kind, "--input", corpus, "--output", tmp_path / kind, "-G", "2", "--max-tokens", "24",
                    "--max-model-len", "2048", "--engine-arg", "distributed_executor_backend=uni") == 0
        rows = list(iter_rows(str(tmp_path / kind)))
        assert rows and all(row["model"].endswith("SmolLM2-135M-Instruct") for row in rows)
        assert all(re.search(r"[A-Za-z]{3}", row["text"]) for row in rows)
