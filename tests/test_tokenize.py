"""`megadoc tokenize` / `megadoc inspect` on real text, checked with real Megatron-Core.

The reference for byte-identity is Megatron-LM's `tools/preprocess_data.py` logic run here on Megatron-Core's
own pieces: its tokenizer classes (`megatron.core.tokenizers`, what preprocess_data.py builds) encode one
document at a time and its `IndexedDatasetBuilder` writes. (The tool itself imports `megatron.training`, which
the megatron-core wheel does not ship; benchmarks/bench_tokenize.py runs the real script when given a checkout.)
Each tokenizer is checked through gigatoken (the default encoder) and through its reference library
(--no-gigatoken); a test that expects gigatoken asserts that it was not refused.
"""

import argparse
import base64
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


GIGATOKEN_REFUSED = "gigatoken not used"
ENCODERS = {"gigatoken": [], "reference": ["--no-gigatoken"]}


def tokenize(inputs, prefix, tokenizer, *extra) -> int:
    return megadoc_main(["tokenize", "--input", *map(str, inputs), "--output-prefix", str(prefix),
                         "--tokenizer-model", str(tokenizer), "--no-progress", *extra])


def same_files(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


def megatron_reference(records: list[dict], prefix: Path, tokenizer_type: str, model: Path, append_eod: bool,
                       vocab_size: int | None = None):
    """preprocess_data.py's per-document encoding and writing, with Megatron-Core's tokenizer and builder."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    args = argparse.Namespace(
        tokenizer_type=tokenizer_type, tokenizer_model=str(model), vocab_file=None, merge_file=None,
        tokenizer_special_tokens=None, tokenizer_hf_use_fast=False, trust_remote_code=False,
        tokenizer_hf_include_special_tokens=False, tokenizer_sentencepiece_legacy=False, tokenizer_metadata=None,
        vocab_size=vocab_size, tiktoken_pattern=None, tiktoken_num_special_tokens=1000, vocab_extra_ids=0,
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


AWKWARD = [  # special-token text, a control byte SmolLM2's vocabulary lacks (HF drops it), bytes past U+FFFF
    {"id": "special", "text": "a <|end_of_text|> b <|begin_of_text|> <s> </s> <unk> <|endoftext|> <SPECIAL_9> c"},
    {"id": "control", "text": "bell \x07 and \x04 end-of-transmission, \x7f del, \U0002F800 \U000E0001 tags"},
]


@pytest.fixture(scope="module")
def corpus(dclm_sample, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The real sample plus the awkward cases: an empty document, a whitespace-only one, special-token text and
    control characters."""
    records = _docs(dclm_sample)
    records.insert(5, {"id": "empty", "text": ""})
    records.insert(9, {"id": "blank", "text": "   \n"})
    records[20:20] = AWKWARD
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return _write_jsonl(path, records), records


def _train_sentencepiece(dclm_sample, out: Path, byte_fallback: bool) -> Path:
    import sentencepiece

    text = out / "train.txt"
    text.write_text("\n".join(doc["text"] for doc in _docs(dclm_sample)))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "sp"), vocab_size=1000,
                                             model_type="bpe", minloglevel=2, num_threads=1,
                                             byte_fallback=byte_fallback)
    return out / "sp.model"


@pytest.fixture(scope="module")
def sp_model(dclm_sample, tmp_path_factory) -> Path:
    """A real sentencepiece model (1,000 pieces, so a uint16 .bin) trained on the real sample; no byte fallback,
    so gigatoken cannot encode it."""
    return _train_sentencepiece(dclm_sample, tmp_path_factory.mktemp("sp"), byte_fallback=False)


@pytest.fixture(scope="module")
def sp_byte_model(dclm_sample, tmp_path_factory) -> Path:
    """The same with byte fallback (as Llama 2's): gigatoken encodes it."""
    return _train_sentencepiece(dclm_sample, tmp_path_factory.mktemp("spb"), byte_fallback=True)


@pytest.fixture(scope="module")
def megatron_vocab(llama3_tiktoken, tmp_path_factory) -> Path:
    """Llama 3's ranks in Megatron-LM's TikTokenizer format (a JSON list; its first 256 ranks are the bytes)."""
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(llama3_tiktoken))
    tokens = [bytes([b]) for b in range(256)] + [t for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    path = tmp_path_factory.mktemp("megatron-tiktoken") / "vocab.json"
    path.write_text(json.dumps([{"rank": i, "token_bytes": base64.b64encode(t).decode(),
                                 "token_str": t.decode("utf-8", "replace")} for i, t in enumerate(tokens)]))
    return path


@pytest.mark.parametrize("append_eod", [True, False])
def test_byte_identical_to_megatron_preprocess_hf(corpus, llama3_hf, tmp_path, append_eod, capsys):
    path, records = corpus
    megatron_reference(records, tmp_path / "ref", "HuggingFaceTokenizer", llama3_hf, append_eod)
    for encoder, flags in ENCODERS.items():
        assert tokenize([path], tmp_path / encoder, llama3_hf, *flags, *["--append-eod"][:append_eod]) == 0
        assert GIGATOKEN_REFUSED not in capsys.readouterr().err
        assert same_files(tmp_path / encoder, tmp_path / "ref"), encoder


@pytest.mark.parametrize("model,gigatoken", [("sp_model", False), ("sp_byte_model", True)])
def test_byte_identical_to_megatron_preprocess_sentencepiece(corpus, model, gigatoken, tmp_path, capsys, request):
    path, records = corpus
    model = request.getfixturevalue(model)
    assert tokenize([path], tmp_path / "ours", model, "--append-eod") == 0
    assert (GIGATOKEN_REFUSED not in capsys.readouterr().err) == gigatoken
    megatron_reference(records, tmp_path / "ref", "SentencePieceTokenizer", model, True)
    assert same_files(tmp_path / "ours", tmp_path / "ref")


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_tiktokenizer_means_what_megatron_means(corpus, megatron_vocab, tmp_path, encoder, capsys, monkeypatch):
    """--tokenizer-type TikTokenizer is Megatron-LM's: ranks shifted by 1,000 special tokens, pattern v2, special-token
    text encoded as the special token, EOD </s> = 2 (Megatron-LM reads a file this small with --vocab-size
    ranks + 1000)."""
    monkeypatch.setenv("MEGADOC_CACHE", str(tmp_path / "cache"))
    path, records = corpus
    assert tokenize([path], tmp_path / "ours", megatron_vocab, "--tokenizer-type", "TikTokenizer", "--append-eod",
                    *ENCODERS[encoder]) == 0
    assert GIGATOKEN_REFUSED not in capsys.readouterr().err
    megatron_reference(records, tmp_path / "ref", "TikTokenizer", megatron_vocab, True,
                       vocab_size=len(json.loads(megatron_vocab.read_text())) + 1000)
    assert same_files(tmp_path / "ours", tmp_path / "ref")


def test_llama3_tiktoken_writes_the_same_bytes_as_hf(corpus, llama3_hf, llama3_tiktoken, tmp_path, capsys,
                                                     monkeypatch):
    """megadoc's own Llama3TikTokenizer (guessed for a .tiktoken file; Megatron-LM has no such type)."""
    monkeypatch.setenv("MEGADOC_CACHE", str(tmp_path / "cache"))
    # HF encodes special-token text as the special token, Meta's tiktoken layout (encode_ordinary) as text.
    path = _write_jsonl(tmp_path / "c.jsonl", [r for r in corpus[1] if r["id"] != "special"])
    assert tokenize([path], tmp_path / "hf", llama3_hf, "--append-eod") == 0
    assert tokenize([path], tmp_path / "tt", llama3_tiktoken, "--append-eod") == 0
    assert GIGATOKEN_REFUSED not in capsys.readouterr().err
    assert tokenize([path], tmp_path / "ref", llama3_tiktoken, "--append-eod", "--no-gigatoken") == 0
    assert same_files(tmp_path / "hf", tmp_path / "tt") and same_files(tmp_path / "tt", tmp_path / "ref")
    # Megatron-LM's name refuses Meta's layout instead of tokenizing it differently.
    assert tokenize([path], tmp_path / "mt", llama3_tiktoken, "--tokenizer-type", "TikTokenizer") == 1
    assert "not a Megatron-LM TikTokenizer vocabulary" in capsys.readouterr().err


def test_gigatoken_matches_smollm2_which_lacks_byte_tokens(corpus, tmp_path, capsys):
    """SmolLM2's vocabulary lacks 21 single-byte tokens; gigatoken gets them as sentinels and the documents that
    hit one (the control characters) are re-encoded by HF: the same bytes, and gigatoken is not refused."""
    path, _ = corpus
    assert tokenize([path], tmp_path / "fast", "smollm2", "--append-eod") == 0
    assert GIGATOKEN_REFUSED not in capsys.readouterr().err
    assert tokenize([path], tmp_path / "ref", "smollm2", "--append-eod", "--no-gigatoken") == 0
    assert same_files(tmp_path / "fast", tmp_path / "ref")


def test_self_check_falls_back_on_any_mismatch(dclm_sample, llama3_hf, capsys):
    """gigatoken is validated against the reference at start-up; a reference that disagrees on one sample text (a
    tokenizer gigatoken would misread) makes it fall back, with a warning."""
    from megadoc.preprocess.fast_tokenizer import gigatoken_encoder
    from megadoc.preprocess.tokenizer import HFTokenizer, TokenizerSpec

    class Disagrees(HFTokenizer):
        def _encode(self, texts):
            return [ids[::-1] if "zebra" in text else ids for text, ids in zip(texts, super()._encode(texts))]

    reference = Disagrees(TokenizerSpec(str(llama3_hf)))
    texts = [doc["text"] for doc in _docs(dclm_sample)[:20]]
    assert gigatoken_encoder(reference, texts) is not None  # no zebra: gigatoken agrees
    capsys.readouterr()
    assert gigatoken_encoder(reference, texts + ["a zebra crossing"]) is None
    assert "self-check: ids differ on sample text" in capsys.readouterr().err


def test_megatron_core_reads_it_back(corpus, llama3_hf, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    path, records = corpus
    assert tokenize([path], tmp_path / "ds", llama3_hf, "--append-eod") == 0
    dataset = IndexedDataset(str(tmp_path / "ds"))
    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    nonempty = [r for r in records if tokenizer.encode_batch([r["text"]])[0]]
    assert len(records) == 222 and len(nonempty) == 221  # whitespace encodes to tokens; "" to none
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


@pytest.fixture(scope="module")
def big(dclm_sample, llama3_hf, tmp_path_factory) -> tuple[Path, list[str], Path]:
    """8,720 documents (~4.3M tokens: several encode batches), the command that tokenizes them, and its output."""
    out = tmp_path_factory.mktemp("big")
    path = out / "big.jsonl"
    path.write_bytes(dclm_sample.read_bytes() * 40)
    common = ["tokenize", "--input", str(path), "--tokenizer-model", str(llama3_hf), "--append-eod",
              "--workers", "1", "--checkpoint-interval", "300", "--no-progress"]
    subprocess.run(MEGADOC + common + ["--output-prefix", str(out / "whole")], check=True)
    return path, common, out / "whole"


def start_until(command: list[str], appears: Path) -> subprocess.Popen:
    """Start `command` and return as soon as `appears` exists (or the run ends)."""
    process = subprocess.Popen(command)
    deadline = time.time() + 120
    while not appears.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    return process


def test_kill_9_then_rerun_gives_identical_bytes(big, tmp_path):
    _, common, whole = big
    state = tmp_path / "killed.tokenize-state.json"
    victim = start_until(MEGADOC + common + ["--output-prefix", str(tmp_path / "killed")], state)
    victim.send_signal(signal.SIGKILL)  # at once: the first checkpoint comes after the first 1 MB batch
    victim.wait()
    assert state.exists(), "the run finished before it could be killed: make the input larger"
    assert not (tmp_path / "killed.idx").exists() and not (tmp_path / "killed.bin").exists()
    done = json.loads(state.read_text())["records_done"]
    assert 0 < done < 8720
    rerun = subprocess.run(MEGADOC + common + ["--output-prefix", str(tmp_path / "killed")],
                           capture_output=True, text=True, check=True)
    assert f"resumed at document {done:,}" in rerun.stderr
    assert same_files(tmp_path / "killed", whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.bin", "killed.idx", "killed.megadoc.json"]


def test_two_runs_on_one_prefix_one_wins(big, tmp_path):
    """A double submission: the second run finds the prefix locked and stops in one line; the first publishes
    consistent files, the same as a lone run's."""
    _, common, whole = big
    first = start_until(MEGADOC + common + ["--output-prefix", str(tmp_path / "p")], tmp_path / "p.lock")
    second = subprocess.run(MEGADOC + common + ["--output-prefix", str(tmp_path / "p")], capture_output=True,
                            text=True)
    assert first.wait() == 0
    assert second.returncode == 1 and len(second.stderr.strip().splitlines()) == 1
    assert "is already being written by another run (lock" in second.stderr, second.stderr
    assert same_files(tmp_path / "p", whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin", "p.idx", "p.megadoc.json"]


def test_publication_is_one_commit(corpus, llama3_hf, tmp_path, monkeypatch, capsys):
    """Killed after the new .bin is in place but before its .idx: the old .idx is already gone, so no reader pairs
    the new .bin with it; the next run finishes the publication."""
    from megadoc.preprocess import indexed

    path, records = corpus
    old = _write_jsonl(tmp_path / "old.jsonl", records[:10])
    assert tokenize([old], tmp_path / "p", llama3_hf, "--append-eod") == 0  # a previous version of the prefix
    assert tokenize([path], tmp_path / "expected", llama3_hf, "--append-eod") == 0
    real_replace = os.replace

    def dies_before_the_idx(src, dst):
        if str(dst).endswith("p.idx"):
            raise KeyboardInterrupt  # stands for kill -9 between the renames
        real_replace(src, dst)

    monkeypatch.setattr(indexed.os, "replace", dies_before_the_idx)
    assert tokenize([path], tmp_path / "p", llama3_hf, "--append-eod") == 130
    monkeypatch.setattr(indexed.os, "replace", real_replace)
    assert (tmp_path / "p.bin").read_bytes() == (tmp_path / "expected.bin").read_bytes()  # the new .bin is in place
    assert not (tmp_path / "p.idx").exists()  # and the old .idx gone: no reader sees a mismatched pair
    capsys.readouterr()
    assert megadoc_main(["inspect", str(tmp_path / "p")]) == 1
    assert "p.idx: no such file" in capsys.readouterr().err
    assert tokenize([path], tmp_path / "p", llama3_hf, "--append-eod") == 0
    assert same_files(tmp_path / "p", tmp_path / "expected")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("p.") and "tmp" in p.name]


def test_long_texts_are_encoded_in_slices_with_the_same_ids(dclm_sample, llama3_hf, llama3_tiktoken, monkeypatch):
    """The reference encoders take a huge document in slices cut between a letter and a space (a pre-token
    boundary of their regexes), so its memory stays that of one slice; the ids are those of the whole text."""
    from megadoc.preprocess import tokenizer as tokenizers

    text = "\n\n".join(doc["text"] for doc in _docs(dclm_sample))  # ~0.5M characters of real text
    for spec in (str(llama3_hf), str(llama3_tiktoken), "smollm2"):
        built = tokenizers.build_tokenizer(tokenizers.TokenizerSpec(spec))
        assert built.sliceable, spec
        whole = built.encode_batch([text, "short"])
        monkeypatch.setattr(tokenizers, "SLICE_CHARS", 20_000)
        assert len(tokenizers.slice_points(text)) > 20
        assert built.encode_batch([text, "short"]) == whole, spec
        monkeypatch.undo()


def test_a_text_too_long_for_an_unsliceable_reference_is_refused(sp_model, tmp_path, monkeypatch, capsys):
    from megadoc.preprocess import tokenizer as tokenizers

    monkeypatch.setattr(tokenizers, "MAX_UNSLICED_CHARS", 1000)
    corpus = _write_jsonl(tmp_path / "c.jsonl", [{"text": "short"}, {"text": "long " * 300}])
    assert tokenize([corpus], tmp_path / "o", sp_model) == 1  # sp without byte fallback: no gigatoken
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "c.jsonl:2: a text of 1,500 characters; without gigatoken this tokenizer encodes at most 1,000" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_one_huge_document_in_bounded_memory(dclm_sample, llama3_hf, tmp_path):
    """A 12 MB single document through HF tokenizers (--no-gigatoken), which take ~100 bytes per character
    whole (1.2 GB on top of the ~220 MB the process starts with; 5.5 GB for 50 MB): in slices the run stays well
    below that (~520 MB here; 50 MB: ~690 MB, ~610 MB through gigatoken; benchmarks/bench_tokenize.py)."""
    text = "\n\n".join(doc["text"] for doc in _docs(dclm_sample)) * 24
    corpus = _write_jsonl(tmp_path / "huge.jsonl", [{"text": text}])
    # VmHWM, the peak RSS of this process image (ru_maxrss would carry over the forking parent's, pytest's).
    probe = ("import re, sys; from megadoc.cli import main; code = main(sys.argv[1:]); "
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "tokenize", "--input", str(corpus), "--output-prefix",
                           str(tmp_path / "o"), "--tokenizer-model", str(llama3_hf), "--no-gigatoken",
                           "--no-progress", "--workers", "2"], capture_output=True, text=True, check=True)
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 750, peak_mb


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


def test_eod_id_outside_the_vocabulary(corpus, sp_model, tmp_path):
    result = subprocess.run(MEGADOC + ["tokenize", "--input", str(corpus[0]), "--output-prefix", str(tmp_path / "o"),
                                       "--tokenizer-model", str(sp_model), "--eod-id", "70000", "--append-eod"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "--eod-id 70000: outside the vocabulary of 1,000 ids" in result.stderr
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
    assert "222 documents (1 empty) -> 221 sequences" in capsys.readouterr().err
    assert megadoc_main(["inspect", str(tmp_path / "ds"), "--tokenizer-model", str(llama3_hf), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "documents         222" in out and "empty_documents   1" in out and "eod_tokens        222" in out  # 221 EODs + one "<|end_of_text|>" in a text
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
