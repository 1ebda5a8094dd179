"""`megadoc tokenize` / `megadoc inspect` on real text, checked with real Megatron-Core.

The reference for byte-identity is Megatron-LM's `tools/preprocess_data.py` logic run here on Megatron-Core's
own pieces: its tokenizer classes (`megatron.core.tokenizers`, what preprocess_data.py builds) encode one
document at a time and its `IndexedDatasetBuilder` writes. (The tool itself imports `megatron.training`, which
the megatron-core wheel does not ship; benchmarks/bench_tokenize.py runs the real script when given a checkout.)
"""

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megadoc.cli import main as megadoc_main

MEGADOC = [sys.executable, "-m", "megadoc"]


def _docs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tokenize(inputs, prefix, tokenizer, *extra) -> int:
    return megadoc_main(["tokenize", "--input", *map(str, inputs), "--output-prefix", str(prefix),
                         "--tokenizer-model", str(tokenizer), "--no-progress", *extra])


def megatron_reference(records: list[dict], prefix: Path, tokenizer_type: str, model: Path, append_eod: bool):
    """preprocess_data.py's per-document encoding and writing, with Megatron-Core's tokenizer and builder."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    args = argparse.Namespace(
        tokenizer_type=tokenizer_type, tokenizer_model=str(model), vocab_file=None, merge_file=None,
        tokenizer_special_tokens=None, tokenizer_hf_use_fast=False, trust_remote_code=False,
        tokenizer_hf_include_special_tokens=False, tokenizer_sentencepiece_legacy=False, tokenizer_metadata=None,
        vocab_size=None, tiktoken_pattern=None, tiktoken_num_special_tokens=1000, vocab_extra_ids=0,
        make_vocab_size_divisible_by=128, tensor_model_parallel_size=1, rank=1)
    tokenizer = build_tokenizer(args)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
    for record in records:
        ids = tokenizer.tokenize(record["text"])
        lens = [len(ids)] if ids else []
        if ids and append_eod:
            ids = ids + [tokenizer.eod]
            lens[-1] += 1
        builder.add_document(ids, lens)
    builder.finalize(str(prefix) + ".idx")


@pytest.fixture(scope="module")
def corpus(dclm_sample, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The real sample plus the awkward cases: an empty document and a whitespace-only one."""
    records = _docs(dclm_sample)
    records.insert(5, {"id": "empty", "text": ""})
    records.insert(9, {"id": "blank", "text": "   \n"})
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return _write_jsonl(path, records), records


@pytest.fixture(scope="module")
def sp_model(dclm_sample, tmp_path_factory) -> Path:
    """A real sentencepiece model (1,000 pieces, so a uint16 .bin) trained on the real sample."""
    import sentencepiece

    out = tmp_path_factory.mktemp("sp")
    text = out / "train.txt"
    text.write_text("\n".join(doc["text"] for doc in _docs(dclm_sample)))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "sp"), vocab_size=1000,
                                             model_type="bpe", minloglevel=2, num_threads=1)
    return out / "sp.model"


@pytest.mark.parametrize("append_eod", [True, False])
def test_byte_identical_to_megatron_preprocess_hf(corpus, llama3_hf, tmp_path, append_eod):
    path, records = corpus
    flags = ["--append-eod"] if append_eod else []
    assert tokenize([path], tmp_path / "ours", llama3_hf, *flags) == 0
    megatron_reference(records, tmp_path / "ref", "HuggingFaceTokenizer", llama3_hf, append_eod)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes(), suffix


def test_byte_identical_to_megatron_preprocess_sentencepiece(corpus, sp_model, tmp_path):
    path, records = corpus
    assert tokenize([path], tmp_path / "ours", sp_model, "--append-eod") == 0
    megatron_reference(records, tmp_path / "ref", "SentencePieceTokenizer", sp_model, True)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes(), suffix


def test_tiktoken_llama3_writes_the_same_bytes_as_hf(corpus, llama3_hf, llama3_tiktoken, tmp_path):
    path, _ = corpus
    assert tokenize([path], tmp_path / "hf", llama3_hf, "--append-eod") == 0
    assert tokenize([path], tmp_path / "tt", llama3_tiktoken, "--append-eod") == 0
    assert (tmp_path / "hf.bin").read_bytes() == (tmp_path / "tt.bin").read_bytes()
    assert (tmp_path / "hf.idx").read_bytes() == (tmp_path / "tt.idx").read_bytes()


def test_megatron_core_reads_it_back(corpus, llama3_hf, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    path, records = corpus
    assert tokenize([path], tmp_path / "ds", llama3_hf, "--append-eod") == 0
    dataset = IndexedDataset(str(tmp_path / "ds"))
    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    nonempty = [r for r in records if tokenizer.encode_batch([r["text"]])[0]]
    assert len(records) == 220 and len(nonempty) == 219  # whitespace encodes to tokens; "" to none
    assert len(dataset) == len(nonempty)
    assert len(dataset.document_indices) == len(records) + 1  # the empty document is still a document
    assert dataset.index.dtype == np.int32  # vocabulary 128,256 > 65,500
    for n in (0, 7, len(nonempty) - 1):
        ids = dataset[n].tolist()
        assert ids[-1] == tokenizer.eod
        assert tokenizer.decode(ids[:-1]) == nonempty[n]["text"]


def test_dtype_rule_small_vocabulary_is_uint16(corpus, sp_model, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    assert tokenize([corpus[0]], tmp_path / "sp", sp_model) == 0
    assert IndexedDataset(str(tmp_path / "sp")).index.dtype == np.uint16


def test_parts_become_one_sequence_with_eod_after_each_part(llama3_hf, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    parts = ["First rephrase of the article.", "Second rephrase, different words.", "The real document."]
    corpus = _write_jsonl(tmp_path / "mega.jsonl", [{"id": "a", "text": "plain doc"}, {"id": "m", "parts": parts}])
    assert tokenize([corpus], tmp_path / "mega", llama3_hf) == 0
    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    dataset = IndexedDataset(str(tmp_path / "mega"))
    assert len(dataset) == 2 and list(dataset.document_indices) == [0, 1, 2]
    expected = [t for ids in tokenizer.encode_batch(parts) for t in ids + [tokenizer.eod]]
    assert dataset[1].tolist() == expected
    assert dataset[0].tolist() == tokenizer.encode_batch(["plain doc"])[0]  # no --append-eod on plain text


def test_every_corpus_format_gives_the_same_bytes(corpus, llama3_hf, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    path, records = corpus
    raw = path.read_bytes()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet", row_group_size=50)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "hfds"))
    half = len(records) // 2
    _write_jsonl(tmp_path / "split-0.jsonl", records[:half])
    _write_jsonl(tmp_path / "split-1.jsonl", records[half:])
    assert tokenize([path], tmp_path / "ref", llama3_hf, "--append-eod") == 0
    reference = (tmp_path / "ref.bin").read_bytes(), (tmp_path / "ref.idx").read_bytes()
    for name, inputs in {"gz": [tmp_path / "c.jsonl.gz"], "zst": [tmp_path / "c.jsonl.zst"],
                         "parquet": [tmp_path / "c.parquet"], "hf": [tmp_path / "hfds"],
                         "glob": [tmp_path / "split-*.jsonl"]}.items():
        assert tokenize(inputs, tmp_path / name, llama3_hf, "--append-eod") == 0, name
        assert ((tmp_path / f"{name}.bin").read_bytes(), (tmp_path / f"{name}.idx").read_bytes()) == reference, name


def test_kill_9_then_rerun_gives_identical_bytes(dclm_sample, llama3_hf, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_bytes(dclm_sample.read_bytes() * 40)  # 8,720 documents, ~4.3M tokens
    common = ["tokenize", "--input", str(big), "--tokenizer-model", str(llama3_hf), "--append-eod",
              "--workers", "1", "--checkpoint-interval", "300", "--no-progress"]
    subprocess.run(MEGADOC + common + ["--output-prefix", str(tmp_path / "whole")], check=True)
    victim = subprocess.Popen(MEGADOC + common + ["--output-prefix", str(tmp_path / "killed")])
    state = tmp_path / "killed.tokenize-state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert state.exists(), "the run finished before it could be killed: make the input larger"
    assert not (tmp_path / "killed.idx").exists() and not (tmp_path / "killed.bin").exists()
    done = json.loads(state.read_text())["records_done"]
    assert 0 < done < 8720
    rerun = subprocess.run(MEGADOC + common + ["--output-prefix", str(tmp_path / "killed")],
                           capture_output=True, text=True, check=True)
    assert f"resumed at document {done:,}" in rerun.stderr
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("killed")) == ["killed.bin", "killed.idx"]


BAD_INPUTS = {
    "malformed": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "broken\n', "bad.jsonl:2: malformed JSON"),
    "missing_key": (b'{"id": "a", "text": "fine"}\n{"id": "b", "body": "x"}\n', "bad.jsonl:2: missing key 'text'"),
    "not_string": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": 42}\n', "bad.jsonl:2: key 'text' is int"),
    "bad_parts": (b'{"id": "a", "parts": ["x", 3]}\n', "bad.jsonl:1: key 'parts' must be a list of strings"),
    "invalid_utf8": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n', "bad.jsonl:2: invalid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_and_no_output(case, llama3_hf, tmp_path):
    content, message = BAD_INPUTS[case]
    (tmp_path / "bad.jsonl").write_bytes(content)
    result = subprocess.run(MEGADOC + ["tokenize", "--input", str(tmp_path / "bad.jsonl"), "--output-prefix",
                                       str(tmp_path / "out"), "--tokenizer-model", str(llama3_hf), "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


def test_token_id_that_does_not_fit_the_dtype(corpus, sp_model, tmp_path):
    result = subprocess.run(MEGADOC + ["tokenize", "--input", str(corpus[0]), "--output-prefix", str(tmp_path / "o"),
                                       "--tokenizer-model", str(sp_model), "--eod-id", "70000", "--append-eod"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "70000 does not fit the uint16" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreadable_tokenizer(corpus, tmp_path):
    junk = tmp_path / "tokenizer.json"
    junk.write_text("{not a tokenizer")
    result = subprocess.run(MEGADOC + ["tokenize", "--input", str(corpus[0]), "--output-prefix", str(tmp_path / "o"),
                                       "--tokenizer-model", str(junk)], capture_output=True, text=True)
    assert result.returncode == 1 and "not a readable HF tokenizer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_summary_counts_empty_documents_and_inspect_reports(corpus, llama3_hf, tmp_path, capsys):
    assert tokenize([corpus[0]], tmp_path / "ds", llama3_hf, "--append-eod") == 0
    assert "220 documents (1 empty) -> 219 sequences" in capsys.readouterr().err
    assert megadoc_main(["inspect", str(tmp_path / "ds"), "--tokenizer-model", str(llama3_hf), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "documents         220" in out and "empty_documents   1" in out and "eod_tokens        219" in out
    second = _docs(corpus[0].parent / "corpus.jsonl")[1]["text"]
    assert second[:200] in out


def test_gpt_dataset_builds_on_the_output(corpus, llama3_hf, tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    assert tokenize([corpus[0]], tmp_path / "ds", llama3_hf, "--append-eod") == 0
    config = GPTDatasetConfig(random_seed=1, sequence_length=256, blend=([str(tmp_path / "ds")], None),
                              split="100,0,0", tokenizer=build_tokenizer(TokenizerSpec(str(llama3_hf))),
                              reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [50, None, None], lambda: True, config).build()
    assert len(train) >= 50
    sample = train[0]
    assert sample["tokens"].shape[0] == 256 and sample["labels"].shape[0] == 256
