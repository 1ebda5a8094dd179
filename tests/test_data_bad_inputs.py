"""Hostile input to the data stages (tokenize, assemble, split, inspect, blend and the data checks of train and
eval): every case ends in one line naming the file or flag, exit status 1 and nothing left behind, or in the right
behaviour where the input is legitimate (a missing output folder is made)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer
from test_tokenize import _train_sentencepiece

SMOLLM2_VOCAB = 49_152


def one_line_error(argv: list[str], capsys) -> str:
    """Run a stage that must fail: exit 1, one line on stderr, no trace."""
    capsys.readouterr()
    assert main(argv) == 1, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and ": error: " in err, err
    return err


@pytest.fixture(scope="module")
def data(dclm_sample, tmp_path_factory) -> dict:
    """A small corpus, a sentencepiece model, and the corpus tokenized by SmolLM2 (49,152 ids) and by the
    sentencepiece model (1,000 ids): both uint16, so only their sidecars tell them apart."""
    out = tmp_path_factory.mktemp("data")
    corpus = out / "corpus.jsonl"
    corpus.write_text("".join(dclm_sample.read_text().splitlines(keepends=True)[:40]))
    sp = _train_sentencepiece(dclm_sample, out, byte_fallback=True)
    for name, model in (("smollm2", "smollm2"), ("sp", str(sp))):
        assert main(["tokenize", "--input", str(corpus), "--output-prefix", str(out / name), "--tokenizer-model",
                     model, "--append-eod", "--no-progress"]) == 0
    return {"dir": out, "corpus": str(corpus), "sp": str(sp), "smollm2": str(out / "smollm2"), "sp_data": str(out / "sp")}


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A read-only folder: a read-only tmpfs where mounting is allowed (root), else /proc/sys (not writable)."""
    path = tmp_path_factory.mktemp("ro")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        yield Path("/proc/sys")
        return
    yield path
    subprocess.run(["umount", str(path)], check=True)


def output_cases(tmp_path: Path, read_only: Path) -> dict[str, tuple[str, str]]:
    """Output paths that cannot be written: (path, words of the error)."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "p.bin").mkdir()
    return {"dir/": (str(tmp_path / "dir") + "/", "directory"),
            "under a file": (str(tmp_path / "afile" / "out"), "afile is a file, not a directory"),
            "read-only": (str(read_only / "out"), "cannot write in"),
            "p.bin is a directory": (str(tmp_path / "p"), "is a directory")}


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("stage", ["tokenize", "assemble", "assemble-prefix", "blend", "split"])
def test_unwritable_outputs_are_one_line(stage, tmp_path, data, read_only, capsys, write_generations):
    generations = write_generations(tmp_path / "gen", [])
    argv = {"tokenize": ["tokenize", "--input", data["corpus"], "--tokenizer-model", data["sp"], "--output-prefix"],
            "assemble": ["assemble", "--method", "simple", "--input", data["corpus"], "--generations", generations,
                         "--output"],
            "assemble-prefix": ["assemble", "--method", "simple", "--input", data["corpus"], "--generations",
                                generations, "--tokenizer-model", data["sp"], "--output-prefix"],
            "blend": ["blend", "--real-path", data["sp_data"], "--seq-length", "64", "--global-batch-size", "2",
                      "--output"],
            "split": ["split", "--input", data["corpus"], "--iid-docs", "2", "--long-docs", "0",
                      "--long-min-tokens", "10", "--tokenizer-model", data["sp"], "--output-dir"]}[stage]
    for name, (path, words) in output_cases(tmp_path, read_only).items():
        if stage == "split" and name == "dir/":
            continue  # --output-dir names a directory
        if stage in ("assemble", "blend") and name == "p.bin is a directory":
            path, words = str(tmp_path / "p.bin"), "is a directory"
        if stage == "split" and name == "p.bin is a directory":
            (tmp_path / "s" / "train.jsonl").mkdir(parents=True)
            path = str(tmp_path / "s")
        before = _left(tmp_path)
        error = one_line_error(argv + [path], capsys)
        assert words in error, (name, error)
        assert _left(tmp_path) == before, name
        assert not (tmp_path / "dir").exists()


def test_a_missing_output_folder_is_made(data, tmp_path):
    assert main(["tokenize", "--input", data["corpus"], "--tokenizer-model", data["sp"], "--no-progress",
                 "--output-prefix", str(tmp_path / "new" / "deeper" / "p")]) == 0
    assert _left(tmp_path / "new" / "deeper") == ["p.bin", "p.idx", "p.megadoc.json"]


def test_bad_tokenizer_settings(data, llama3_hf, llama3_tiktoken, tmp_path, capsys):
    base = ["tokenize", "--input", data["corpus"], "--output-prefix", str(tmp_path / "o")]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((Path(llama3_hf) / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|end_of_text|>",')
    assert "tokenizer_config.json: malformed tokenizer_config.json" in one_line_error(
        base + ["--tokenizer-model", str(folder)], capsys)
    assert "--tiktoken-pattern '(?P<x': not a valid regex" in one_line_error(
        base + ["--tokenizer-model", str(llama3_tiktoken), "--tiktoken-pattern", "(?P<x"], capsys)
    assert f"--eod-id 60000: outside the vocabulary of {SMOLLM2_VOCAB:,} ids" in one_line_error(
        base + ["--tokenizer-model", "smollm2", "--eod-id", "60000"], capsys)
    assert "TikTokenizer (Megatron-LM's) takes v1 or v2" in one_line_error(
        base + ["--tokenizer-model", str(llama3_tiktoken), "--tokenizer-type", "TikTokenizer", "--tiktoken-pattern",
                "llama3"], capsys)
    assert _left(tmp_path) == ["tok"]


def _copy(prefix: str, to: Path) -> str:
    for suffix in (".bin", ".idx", ".megadoc.json"):
        Path(f"{to}{suffix}").write_bytes(Path(f"{prefix}{suffix}").read_bytes())
    return str(to)


def test_broken_pairs_are_refused_by_every_reader(data, tmp_path, capsys):
    truncated = _copy(data["sp_data"], tmp_path / "truncated")
    Path(f"{truncated}.idx").write_bytes(Path(f"{truncated}.idx").read_bytes()[:-9])
    short = _copy(data["sp_data"], tmp_path / "short")
    Path(f"{short}.bin").write_bytes(Path(f"{short}.bin").read_bytes()[:-2])
    stale = _copy(data["sp_data"], tmp_path / "stale")
    Path(f"{stale}.megadoc.json").write_bytes(Path(f"{data['smollm2']}.megadoc.json").read_bytes())
    for prefix, words in ((truncated, "truncated or corrupt"), (short, "the pair does not belong together"),
                          (stale, "left from another write")):
        for argv in (["inspect", prefix], ["blend", "--real-path", prefix, "--seq-length", "64",
                                           "--global-batch-size", "2"]):
            assert words in one_line_error(argv, capsys), argv


def test_data_of_two_tokenizers_is_never_mixed(data, capsys):
    """Two uint16 datasets, 49,152 and 1,000 ids: blend, train (with either tokenizer, on a blend or one prefix)
    and eval refuse them by their sidecars' fingerprints."""
    from megadoc.evaluation.evaluate import open_prefix
    from megadoc_data.config import MegadocBlendConfig
    from megadoc_data.datasets import check_plan, single_prefix_dataset

    error = one_line_error(["blend", "--real-path", data["smollm2"], "--synthetic-path", data["sp_data"],
                            "--synthetic-fraction", "0.5", "--seq-length", "64", "--global-batch-size", "2"], capsys)
    assert f"{data['sp_data']}: tokenized with SentencePieceTokenizer" in error and "smollm2" in error
    sp = build_tokenizer(TokenizerSpec(data["sp"]))
    blend = MegadocBlendConfig(real_prefix=data["smollm2"], seq_length=64, global_batch_size=2)
    with pytest.raises(MegadocError, match="tokenized with HuggingFaceTokenizer .* not with the SentencePieceTok"):
        check_plan(blend, sp)
    with pytest.raises(MegadocError, match="fingerprints differ"):
        single_prefix_dataset(data["smollm2"], sp, 64, 1)
    with pytest.raises(MegadocError, match="fingerprints differ"):
        open_prefix(data["smollm2"], SMOLLM2_VOCAB, sp)
    assert check_plan(blend, build_tokenizer(TokenizerSpec("smollm2"))).train_iters > 0


# ---------------------------------------------------------------------------------------------------- assemble


def _rows(doc_ids, kind="rephrase", g=2, text="rephrase {i} of {doc}"):
    return [{"doc_id": doc, "kind": kind, "index": i, "text": text.format(i=i, doc=doc),
             "split_offset": 0 if kind == "rationale" else None} for doc in doc_ids for i in range(g)]


def _corpus_ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in Path(path).read_text().splitlines()]


def test_assemble_refuses_what_is_not_a_stream(data, tmp_path, capsys, write_generations):
    ids = _corpus_ids(data["corpus"])
    base = ["assemble", "--method", "simple", "--input", data["corpus"], "--output", str(tmp_path / "s.jsonl")]
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = write_generations(tmp_path / "wrong", _rows(ids, kind="rationale"))
    duplicated = write_generations(tmp_path / "dup", _rows(ids) + _rows(ids[3:4], text="again {i}"))
    cases = {"empty": (str(empty), "no committed generation chunks"),
             "wrong kind": (wrong, "holds no rephrase generations (rows: 80 rationale)"),
             "duplicate rows": (duplicated, f"generation 0 of document {ids[3]!r} is also in")}
    for name, (generations, words) in cases.items():
        assert words in one_line_error(base + ["--generations", generations], capsys), name
        assert _left(tmp_path) == ["dup", "empty", "wrong"], name


def test_assemble_drops_and_counts_empty_generations(data, tmp_path, write_generations):
    ids = _corpus_ids(data["corpus"])
    rows = _rows(ids) + [{"doc_id": ids[0], "kind": "rephrase", "index": 2, "text": "  \n"},
                         {"doc_id": ids[1], "kind": "rephrase", "index": 2, "text": ""}]
    assert main(["assemble", "--method", "simple", "--input", data["corpus"], "--output", str(tmp_path / "s.jsonl"),
                 "--generations", write_generations(tmp_path / "gen", rows)]) == 0
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["generations"] == 2 * len(ids) and summary["empty_generations"] == 2
    assert summary["records"] == 3 * len(ids)


def test_no_validation_document_enters_a_stream(data, tmp_path, capsys, write_generations):
    """The split's validation ids, found beside the input (as `megadoc split` writes them) or passed: a corpus
    document of one, a generation of one, and a record of one in a stream given to tokenize are all refused."""
    ids = _corpus_ids(data["corpus"])
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.jsonl").write_text(Path(data["corpus"]).read_text())
    (split / "validation_ids.txt").write_text(f"{ids[7]}\n")
    clean = write_generations(tmp_path / "gen", _rows(ids[:5]))
    base = ["assemble", "--method", "stitched", "--output", str(tmp_path / "s.jsonl"), "--generations"]
    error = one_line_error(base + [clean, "--input", str(split / "train.jsonl")], capsys)
    assert f"train.jsonl:8: document {ids[7]!r} is a validation document" in error
    train = [line for line in (split / "train.jsonl").read_text().splitlines() if ids[7] not in line]
    elsewhere = tmp_path / "train-elsewhere.jsonl"
    elsewhere.write_text("\n".join(train) + "\n")
    leaky = write_generations(tmp_path / "leaky", _rows(ids[6:9]))
    error = one_line_error(base + [leaky, "--input", str(elsewhere), "--validation-ids", str(split)], capsys)
    assert f"generations of validation document {ids[7]!r}" in error
    assert _left(tmp_path) == ["gen", "leaky", "split", "train-elsewhere.jsonl"]
    # The summary of an assembled stream records the ids it was checked against; tokenize checks them too.
    (split / "train.jsonl").write_text(elsewhere.read_text())
    assert main(base + [clean, "--input", str(split / "train.jsonl")]) == 0
    stream = tmp_path / "s.jsonl"
    stream.write_text(stream.read_text() + json.dumps({"id": f"{ids[7]}/0", "text": "leaked rephrase"}) + "\n")
    tokenize = ["tokenize", "--input", str(stream), "--tokenizer-model", data["sp"], "--no-progress", "--output-prefix",
                str(tmp_path / "t")]
    assert f"s.jsonl:{len(train) + 1}: record '{ids[7]}/0' is (generated from) a validation document" in \
        one_line_error(tokenize, capsys)
    assert not list(tmp_path.glob("t.*"))
