"""megadoc assemble: simple / stitched / stretched streams from real DCLM documents and hand-written shards."""

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from megadoc.cli import main
from megadoc_data.sources import read_source

G = 3


@pytest.fixture
def corpus(tmp_path, dclm_sample):
    """Six real documents (ids kept)."""
    lines = Path(dclm_sample).read_text().splitlines()[:6]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), [json.loads(line) for line in lines]


def _generation(doc, kind, index, text, offset=None):
    return {"doc_id": str(doc["id"]), "kind": kind, "index": index, "text": text, "split_offset": offset,
            "finish_reason": "stop", "model": "test", "params_hash": "h", "truncated": False}


@pytest.fixture
def generations(tmp_path, corpus, write_generations):
    """G rephrases and G rationales per document; rationales written out of order, at word boundaries."""
    rows = []
    for doc in corpus[1]:
        words = doc["text"].split(" ")
        for i in range(G):
            rows.append(_generation(doc, "rephrase", i, f"Rephrase {i}: " + " ".join(words[i::G][:80])))
        offsets = sorted({len(" ".join(words[: len(words) * (k + 1) // (G + 1)])) for k in range(G)})
        for i, offset in reversed(list(enumerate(offsets))):
            rows.append(_generation(doc, "rationale", i, f"Thought {i} about what follows.", offset))
    return write_generations(tmp_path / "gen", rows)


def assemble(tmp_path, corpus, generations, method, name, *extra):
    output = tmp_path / f"{name}.jsonl"
    argv = ["assemble", "--method", method, "--input", corpus[0], "--generations", generations,
            "--output", str(output), *extra]
    assert main(argv) == 0
    return [orjson.loads(line) for line in output.read_bytes().splitlines()], output


def test_stretched_round_trips_to_the_original(tmp_path, corpus, generations):
    records, _ = assemble(tmp_path, corpus, generations, "stretched", "z")
    from megadoc.preprocess.assemble import strip_rationales

    originals = {str(doc["id"]): doc["text"] for doc in corpus[1]}
    assert len(records) == len(originals)
    for record in records:
        assert strip_rationales(record["text"]) == originals[record["id"]]
        assert record["text"].count("\n<think>\n") == G
        thoughts = [part.split("\n</think>\n")[0] for part in record["text"].split("\n<think>\n")[1:]]
        assert thoughts == [f"Thought {i} about what follows." for i in range(G)]  # ordered by split point


def test_stretched_custom_delimiters_round_trip(tmp_path, corpus, generations):
    records, _ = assemble(tmp_path, corpus, generations, "stretched", "zc", "--rationale-open", "\n\n[",
                          "--rationale-close", "]\n\n")
    from megadoc.preprocess.assemble import strip_rationales

    originals = {str(doc["id"]): doc["text"] for doc in corpus[1]}
    assert all(strip_rationales(r["text"], "\n\n[", "]\n\n") == originals[r["id"]] for r in records)


def test_stitched_layout(tmp_path, corpus, generations):
    last, _ = assemble(tmp_path, corpus, generations, "stitched", "b")
    first, _ = assemble(tmp_path, corpus, generations, "stitched", "f", "--real-position", "first")
    none, _ = assemble(tmp_path, corpus, generations, "stitched", "n", "--real-position", "none")
    shuffled, _ = assemble(tmp_path, corpus, generations, "stitched", "r", "--order", "random", "--seed", "7")
    originals = {str(doc["id"]): doc["text"] for doc in corpus[1]}
    for record in last:
        assert len(record["parts"]) == G + 1 and record["parts"][-1] == originals[record["id"]]
        assert [p.split(":")[0] for p in record["parts"][:G]] == [f"Rephrase {i}" for i in range(G)]
    assert all(r["parts"][0] == originals[r["id"]] for r in first)
    assert all(len(r["parts"]) == G and originals[r["id"]] not in r["parts"] for r in none)
    by_id = {r["id"]: r["parts"] for r in last}
    assert all(sorted(r["parts"]) == sorted(by_id[r["id"]]) and r["parts"][-1] == by_id[r["id"]][-1]
               for r in shuffled)
    assert any(r["parts"] != by_id[r["id"]] for r in shuffled)


def test_simple_is_every_rephrase_plus_one_real_copy(tmp_path, corpus, generations):
    records, path = assemble(tmp_path, corpus, generations, "simple", "s")
    assert len(records) == len(corpus[1]) * (G + 1)
    expected = [(f"{doc['id']}/{i}", f"Rephrase {i}: ") for doc in corpus[1] for i in range(G)]
    assert sorted((r["id"], r["text"][:len(f"Rephrase {r['id'][-1]}: ")]) for r in records if "/" in r["id"]) == \
        sorted(expected)
    assert sorted(r["text"] for r in records if "/" not in r["id"]) == sorted(doc["text"] for doc in corpus[1])
    again, path2 = assemble(tmp_path, corpus, generations, "simple", "s2", "--workers", "1")
    assert path.read_bytes() == path2.read_bytes()  # deterministic, whatever the number of workers
    summary = json.loads(Path(str(path) + ".summary.json").read_text())
    assert summary["records"] == len(records) and summary["generations"] == G * len(corpus[1])


def test_simple_without_the_real_copy(tmp_path, corpus, generations):
    """--real-position none: the rephrases alone (the paper's 'no real copy' ablation); first: the copy leads."""
    none, _ = assemble(tmp_path, corpus, generations, "simple", "n", "--real-position", "none")
    originals = {doc["text"] for doc in corpus[1]}
    assert len(none) == len(corpus[1]) * G and not any(r["text"] in originals for r in none)
    assert all("/" in r["id"] for r in none)
    first, _ = assemble(tmp_path, corpus, generations, "simple", "f", "--real-position", "first")
    assert [r["id"] for r in first[:G + 1]] == [first[0]["id"]] + [f"{first[0]['id']}/{i}" for i in range(G)]


def test_many_buckets_give_the_same_stream(tmp_path, corpus, generations, monkeypatch):
    """Bounded memory: with buckets of a few KB the join runs over many bucket files (and two workers); every
    record is the same, each megadoc whole, and the order is fixed by the data alone."""
    from megadoc.preprocess import assemble as assembler

    one, _ = assemble(tmp_path, corpus, generations, "stitched", "one", "--workers", "1")
    monkeypatch.setattr(assembler, "BUCKET_BYTES", 2_000)
    many, path = assemble(tmp_path, corpus, generations, "stitched", "many", "--workers", "2")
    again, path2 = assemble(tmp_path, corpus, generations, "stitched", "many2", "--workers", "1")
    assert json.loads(Path(f"{path}.summary.json").read_text())["buckets"] > 3
    assert sorted(map(orjson.dumps, many)) == sorted(map(orjson.dumps, one))
    assert path.read_bytes() == path2.read_bytes()
    assert not list(tmp_path.glob("*.assemble-tmp")) and not list(tmp_path.glob("*.lock"))


def test_simple_and_stitched_hold_the_same_tokens(tmp_path, corpus, generations, llama3_hf):
    sizes = {}
    for method in ("simple", "stitched"):
        prefix = tmp_path / method
        assert main(["assemble", "--method", method, "--input", corpus[0], "--generations", generations,
                     "--output-prefix", str(prefix), "--tokenizer-model", str(llama3_hf), "--workers", "1"]) == 0
        source = read_source(str(prefix))
        summary = json.loads(Path(f"{prefix}.jsonl.summary.json").read_text())
        assert summary["tokens"]["total"] == source.tokens
        sizes[method] = (source.tokens, len(source.sequence_lengths))
    assert sizes["simple"][0] == sizes["stitched"][0]
    assert sizes["simple"][1] == len(corpus[1]) * (G + 1) and sizes["stitched"][1] == len(corpus[1])


def test_eod_id_reaches_the_tokenizer_of_assemble(tmp_path, corpus, generations, llama3_hf):
    """Megatron-LM's tokenizer flags pass whole to assemble's tokenizer: --eod-id ends every part of the stream."""
    prefix = tmp_path / "stitched"
    eod = 128_002  # a reserved special token of Llama 3 that no text encodes to
    assert main(["assemble", "--method", "stitched", "--input", corpus[0], "--generations", generations,
                 "--output-prefix", str(prefix), "--tokenizer-model", str(llama3_hf), "--eod-id", str(eod),
                 "--workers", "1"]) == 0
    tokens = np.fromfile(f"{prefix}.bin", dtype=np.int32)
    assert np.count_nonzero(tokens == eod) == len(corpus[1]) * (G + 1)  # one per part: G rephrases + the document
    assert np.count_nonzero(tokens == 128_001) == 0  # the tokenizer's own EOD is not used


def test_bad_inputs(tmp_path, corpus, capsys, write_generations):
    doc = corpus[1][0]
    stray = write_generations(tmp_path / "stray", [_generation({"id": "nope"}, "rephrase", 0, "x")])
    argv = ["assemble", "--method", "simple", "--input", corpus[0], "--output", str(tmp_path / "o.jsonl")]
    assert main(argv + ["--generations", stray]) == 1
    assert "not in the corpus (e.g. 'nope')" in capsys.readouterr().err
    bad = write_generations(tmp_path / "bad", [_generation(doc, "rationale", 0, "t", 10**9)])
    argv[2] = "stretched"
    assert main(argv + ["--generations", bad]) == 1
    assert "split_offset 1000000000, outside" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_kill_9_leaves_no_worker_behind(tmp_path, dclm_sample, write_generations):
    """Killed while its workers join buckets, assemble leaves no orphan process (they hold its files and the lock
    on its output); the rerun takes the lock and writes the stream a clean run writes."""
    import subprocess
    import sys
    import time

    import psutil

    texts = [json.loads(line)["text"] for line in Path(dclm_sample).read_text().splitlines()]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": texts[i % len(texts)]}) + "\n" for i in range(300)))
    rows = [_generation({"id": f"d{i}"}, "rephrase", k, f"{i}.{k} " + (texts[(i + k) % len(texts)] * 3)[:2800])
            for i in range(300) for k in range(32)]  # ~27 MB of distinct texts: two buckets, joined by two workers
    generations = write_generations(tmp_path / "gen", rows)
    command = [sys.executable, "-m", "megadoc", "assemble", "--method", "stitched", "--input", str(corpus),
               "--generations", generations, "--workers", "2", "--output"]
    victim = psutil.Popen(command + [str(tmp_path / "s.jsonl")], stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 60, []
    while not workers and time.time() < deadline and victim.poll() is None:
        workers = victim.children()
        time.sleep(0.01)
    assert workers, "assemble finished before its workers could be seen"
    victim.kill()
    victim.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert subprocess.run(command + [str(tmp_path / "s.jsonl")], capture_output=True).returncode == 0
    assert subprocess.run(command + [str(tmp_path / "clean.jsonl")], capture_output=True).returncode == 0
    assert (tmp_path / "s.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
