"""megadoc split: held-out sets are disjoint from training, deterministic by seed, and refused when impossible."""

import json

import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.preprocess.split import check_no_leak, load_validation_ids


def _split(tmp_path, corpus, tokenizer, name="out", seed=7, long_docs=2, long_min_tokens=1024, iid_docs=20):
    out = tmp_path / name
    argv = ["split", "--input", str(corpus), "--output-dir", str(out), "--iid-docs", str(iid_docs),
            "--long-docs", str(long_docs), "--long-min-tokens", str(long_min_tokens),
            "--tokenizer-model", str(tokenizer), "--seed", str(seed)]
    return main(argv), out


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_split_holds_out_and_never_leaks(tmp_path, dclm_sample, llama3_hf, capsys):
    code, out = _split(tmp_path, dclm_sample, llama3_hf)
    assert code == 0, capsys.readouterr().err
    train, iid, long = (_ids(out / name) for name in ("train.jsonl", "valid_iid.jsonl", "valid_long.jsonl"))
    validation = load_validation_ids(out)
    assert (len(iid), len(long), len(train)) == (20, 2, 218 - 22)
    assert validation == set(iid) | set(long)
    assert not validation & set(train)
    check_no_leak(train, validation)
    with pytest.raises(MegadocError, match=repr(long[0])):
        check_no_leak(train[:3] + [long[0]], validation, what="stitched shard")
    summary = json.loads((out / "split.json").read_text())
    assert summary["long_tokens"] >= 2 * 1024


def test_split_is_deterministic_by_seed(tmp_path, dclm_sample, llama3_hf):
    _, first = _split(tmp_path, dclm_sample, llama3_hf, name="a")
    _, again = _split(tmp_path, dclm_sample, llama3_hf, name="b")
    _, other = _split(tmp_path, dclm_sample, llama3_hf, name="c", seed=8)
    for name in ("train.jsonl", "valid_iid.jsonl", "valid_long.jsonl", "validation_ids.txt"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert load_validation_ids(first) != load_validation_ids(other)


def test_too_few_long_documents_is_a_clear_error(tmp_path, dclm_sample, llama3_hf, capsys):
    code, out = _split(tmp_path, dclm_sample, llama3_hf, long_docs=5, long_min_tokens=4096)
    assert code == 1
    assert "only 1 documents have >= 4096 tokens, 5 asked" in capsys.readouterr().err
    assert not (out / "train.jsonl").exists()


def test_duplicate_ids_are_refused(tmp_path, llama3_hf, capsys):
    corpus = tmp_path / "dup.jsonl"
    corpus.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n')
    code, _ = _split(tmp_path, corpus, llama3_hf, long_docs=0, iid_docs=1)
    assert code == 1 and "id 'a' already used" in capsys.readouterr().err


def _rephrases(doc_ids):
    """Two hand-written rephrases per document."""
    return [{"doc_id": doc_id, "kind": "rephrase", "index": i, "text": f"rephrase {i} of {doc_id}"}
            for doc_id in doc_ids for i in range(2)]


def test_no_validation_document_reaches_a_synthetic_stream(tmp_path, dclm_sample, llama3_hf, capsys,
                                                          write_generations):
    _, out = _split(tmp_path, dclm_sample, llama3_hf)
    validation, train = load_validation_ids(out), _ids(out / "train.jsonl")
    for method in ("simple", "stitched"):
        stream = tmp_path / f"{method}.jsonl"
        argv = ["assemble", "--method", method, "--input", str(out / "train.jsonl"), "--output", str(stream),
                "--generations", write_generations(tmp_path / f"gen-{method}", _rephrases(train))]
        assert main(argv) == 0, capsys.readouterr().err
        sources = [json.loads(line)["id"].split("/")[0] for line in stream.read_text().splitlines()]
        assert set(sources) == set(train)
        check_no_leak(sources, validation, what=str(stream))
    # Generations made from the whole corpus (validation documents included) are refused against the train split
    # (its validation_ids.txt is found beside it).
    everything = write_generations(tmp_path / "gen-all", _rephrases(_ids(out / "train.jsonl") + sorted(validation)))
    argv = ["assemble", "--method", "simple", "--input", str(out / "train.jsonl"), "--generations", everything,
            "--output", str(tmp_path / "leaky.jsonl")]
    capsys.readouterr()
    assert main(argv) == 1 and "generations of validation document" in capsys.readouterr().err


def test_short_set_and_nested_data_budgets(tmp_path, dclm_sample, llama3_hf, capsys):
    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    out = tmp_path / "out"
    argv = ["split", "--input", str(dclm_sample), "--output-dir", str(out), "--iid-docs", "10", "--long-docs", "2",
            "--long-min-tokens", "1024", "--short-docs", "8", "--short-max-tokens", "200", "--budgets", "0.25",
            "0.5", "20000", "--tokenizer-model", str(llama3_hf)]
    assert main(argv) == 0, capsys.readouterr().err
    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    short = [json.loads(line)["text"] for line in (out / "valid_short.jsonl").read_text().splitlines()]
    assert len(short) == 8 and max(len(ids) for ids in tokenizer.encode_batch(short)) <= 200
    train = _ids(out / "train.jsonl")
    assert len(train) == 218 - 20 and load_validation_ids(out) == set(_ids(out / "valid_short.jsonl")) | \
        set(_ids(out / "valid_iid.jsonl")) | set(_ids(out / "valid_long.jsonl"))
    summary = json.loads((out / "split.json").read_text())
    budgets = {label: _ids(out / "budgets" / f"{label}.jsonl") for label in ("0.25", "0.5", "20000")}
    assert set(budgets["0.25"]) < set(budgets["0.5"]) <= set(train) and set(budgets["20000"]) <= set(train)
    assert [i for i in train if i in set(budgets["0.5"])] == budgets["0.5"]  # corpus order, as train.jsonl
    for label, target in (("0.25", 0.25 * summary["train_tokens"]), ("0.5", 0.5 * summary["train_tokens"]),
                          ("20000", 20000)):
        texts = [json.loads(line)["text"] for line in (out / "budgets" / f"{label}.jsonl").read_text().splitlines()]
        tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
        assert tokens == summary["budgets"][label]["tokens"] >= target  # the shortest prefix reaching the budget
    assert main(argv[:-6] + ["--budgets", "2", "--tokenizer-model", str(llama3_hf)]) == 0  # 2 tokens: one document
    assert main(argv[:-6] + ["--budgets", "1e9", "--tokenizer-model", str(llama3_hf)]) == 1
    assert "training split has" in capsys.readouterr().err
