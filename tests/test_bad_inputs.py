"""Hostile input to the stages after the data (train, pretrain, eval, export, efficiency, report, run, submit) and to
split, tokenize and blend: each case ends in one line naming the flag, field or file, exit status 1, and the folder as
it was (nothing made, nothing partial: not even the output folder a stage made before it refused its input). The data stages' cases are in test_data_bad_inputs.py, tokenize's in test_tokenize.py, the plan's in
test_blend.py, eval's data and checkpoint cases in test_evaluate.py, the pipeline YAML's in test_launch_hardening.py.
Every case here fails before a model is built or a process group started, so the table runs in seconds."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.training.registry import COLUMNS
from test_data_bad_inputs import SMOLLM2_VOCAB, data, one_line_error, read_only  # noqa: F401 (fixtures)
from test_report import _registry

MEGADOC = [str(Path(sys.executable).parent / "megadoc")]


def _train(c: dict, *flags: str) -> list[str]:
    return ["train", "--recipe", "tiny", "--data-path", c["smollm2"], "--tokenizer-model", "smollm2",
            "--train-iters", "2", "--global-batch-size", "2", "--save", str(c["tmp"] / "ck"), *flags]


def _eval(c: dict, out: str) -> list[str]:
    return ["eval", "--load", str(c["tmp"] / "nowhere"), "--valid-path", c["smollm2"], "--output-dir", out]


def _analysis(c: dict, stage: str, out: str, *flags: str) -> list[str]:
    return [stage, "--registry", str(c["registry"]), "--output-dir", out, *flags]


def _write(path: Path, content: bytes | str) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


# name -> (setup(c) run before the folder is listed, argv(c), words of the one-line error)
CASES = {
    "train --lr -1": (None, lambda c: _train(c, "--lr", "-1"), "lr: -1.0 must be a finite number > 0"),
    "train --lr nan": (None, lambda c: _train(c, "--lr", "nan"), "lr: nan must be a finite number > 0"),
    "train --weight-decay -1": (None, lambda c: _train(c, "--weight-decay", "-1"),
                                "weight_decay: -1.0 must be a finite number >= 0"),
    "train --clip-grad nan": (None, lambda c: _train(c, "--clip-grad", "nan"), "clip_grad: nan must be a finite"),
    "train gbs not a multiple of mbs": (None, lambda c: _train(c, "--global-batch-size", "3", "--micro-batch-size",
                                                               "2"),
                                        "global_batch_size: 3 is not a multiple of micro_batch_size 2"),
    "train --global-batch-size 0": (None, lambda c: _train(c, "--global-batch-size", "0"),
                                    "global_batch_size: 0 must be >= 1"),
    "train --seq-length 0": (None, lambda c: _train(c, "--seq-length", "0"), "seq_length: 0 must be >= 1"),
    "train --tensor-model-parallel-size 0": (None, lambda c: _train(c, "--tensor-model-parallel-size", "0"),
                                             "tensor_model_parallel_size: 0 must be >= 1"),
    "train --train-iters -3": (None, lambda c: _train(c, "--train-iters", "-3"), "--train-iters -3: must be >= 1"),
    "train --load a file": (lambda c: _write(c["tmp"] / "l", "x"), lambda c: _train(c, "--load", str(c["tmp"] / "l")),
                            "a file; --load names a checkpoint folder"),
    "train --save a file": (lambda c: _write(c["tmp"] / "ck", "x"), lambda c: _train(c), "ck is a file, not a "
                                                                                          "directory"),
    "train --save under a file": (lambda c: _write(c["tmp"] / "f", "x"),
                                  lambda c: _train(c, "--save", str(c["tmp"] / "f" / "ck")), "f is a file, not a"),
    "train --save read-only": (None, lambda c: _train(c, "--save", str(c["ro"] / "ck")), "cannot write in"),
    "train --registry a folder": (lambda c: (c["tmp"] / "r.csv").mkdir(),
                                  lambda c: _train(c, "--registry", str(c["tmp"] / "r.csv"), "--method", "real"),
                                  "r.csv: is a directory"),
    "eval --output-dir a file": (lambda c: _write(c["tmp"] / "o", "x"), lambda c: _eval(c, str(c["tmp"] / "o")),
                                 "o is a file, not a directory"),
    "eval --output-dir read-only": (None, lambda c: _eval(c, str(c["ro"] / "o")), "cannot write in"),
    "export --output under a file": (lambda c: _write(c["tmp"] / "f", "x"),
                                     lambda c: ["export", "--load", str(c["tmp"]), "--output",
                                                str(c["tmp"] / "f" / "hf")], "f is a file, not a directory"),
    "export --output read-only": (None, lambda c: ["export", "--load", str(c["tmp"]), "--output",
                                                   str(c["ro"] / "hf")], "cannot write in"),
    "export --output exists": (lambda c: (c["tmp"] / "hf").mkdir(),
                               lambda c: ["export", "--load", str(c["tmp"]), "--output", str(c["tmp"] / "hf")],
                               "hf: already exists; export writes a new folder"),
    "run of a missing YAML": (None, lambda c: ["run", str(c["tmp"] / "p.yaml")], "p.yaml: cannot read the pipeline"),
    "submit of YAML that is not a mapping": (lambda c: _write(c["tmp"] / "p.yaml", "- 1\n"),
                                             lambda c: ["submit", str(c["tmp"] / "p.yaml"), "--dry-run"],
                                             "p.yaml: a pipeline is a YAML mapping"),
    "pretrain unknown recipe": (None, lambda c: ["pretrain", "huge", "real_path=x"], "recipe: 'huge' is not one of"),
    "registry not UTF-8": (lambda c: _write(c["registry"], b"run,method\n\xff\xfe,x\n"),
                           lambda c: _analysis(c, "report", str(c["tmp"] / "out")),
                           "runs.csv: not a registry CSV (invalid UTF-8 at byte 11)"),
    "registry row with a stray comma": (
        lambda c: _write(c["registry"], c["registry"].read_text() + "x," * (len(COLUMNS) + 1) + "x\n"),
        lambda c: _analysis(c, "efficiency", str(c["tmp"] / "out")),
        f"runs.csv:15: {len(COLUMNS) + 2} cells, the header names {len(COLUMNS)}"),
    "report --output-dir under a file": (lambda c: _write(c["tmp"] / "f", "x"),
                                         lambda c: _analysis(c, "report", str(c["tmp"] / "f" / "out")),
                                         "f is a file, not a directory"),
    "efficiency --output-dir read-only": (None, lambda c: _analysis(c, "efficiency", str(c["ro"] / "out"), "--alpha",
                                                                    "0.3", "--asymptote", "2"), "cannot write in"),
    "efficiency --alpha -1": (None, lambda c: _analysis(c, "efficiency", str(c["tmp"] / "out"), "--alpha", "-1",
                                                        "--asymptote", "2"), "the law needs alpha > 0"),
    "report with a missing loss-by-position curve": (lambda c: (c["registry"].parent / "real.json").unlink(),
                                                     lambda c: _analysis(c, "report", str(c["tmp"] / "out")),
                                                     "real.json: not a loss-by-position JSON"),
    "tokenize of a refused input into a new folder": (
        lambda c: _write(c["tmp"] / "bad.jsonl", '{"text": "a"}\n{"text": \n'),
        lambda c: ["tokenize", "--input", str(c["tmp"] / "bad.jsonl"), "--tokenizer-model", c["sp"], "--no-progress",
                   "--output-prefix", str(c["tmp"] / "new" / "deeper" / "p")], "bad.jsonl:2: malformed JSON"),
    "tokenize --tokenizer-model ''": (None, lambda c: ["tokenize", "--input", c["corpus"], "--tokenizer-model", "",
                                                       "--output-prefix", str(c["tmp"] / "p")],
                                      "--tokenizer-model is empty"),
    "blend --output in a new folder, a prefix missing": (
        None, lambda c: ["blend", "--real-path", str(c["tmp"] / "missing"), "--seq-length", "64", "--global-batch-size",
                         "2", "--output", str(c["tmp"] / "new" / "plan.json")], "missing.idx: no such file"),
    "split of too few documents": (None, lambda c: ["split", "--input", c["corpus"], "--tokenizer-model", c["sp"],
                                                    "--iid-docs", "40", "--long-docs", "0", "--long-min-tokens", "10",
                                                    "--output-dir",
                                                    str(c["tmp"] / "s")], "40 documents cannot give"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_and_nothing_left(case, tmp_path, data, read_only, capsys):
    registry_dir = tmp_path / "reg"
    registry_dir.mkdir()
    context = {**data, "tmp": tmp_path, "ro": read_only, "registry": _registry(registry_dir)}
    setup, argv, words = CASES[case]
    if setup:
        setup(context)
    before = sorted(tmp_path.rglob("*"))
    assert words in one_line_error(argv(context), capsys)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(importlib.util.find_spec("megatron.bridge") is not None, reason="Megatron-Bridge is installed")
def test_pretrain_without_bridge_says_where_it_runs(capsys):
    assert "Megatron-Bridge cannot be imported here" in one_line_error(["pretrain", "tiny", "real_path=x"], capsys)


def test_train_refuses_data_its_vocabulary_or_context_cannot_hold(data):
    """--vocab-size below the vocabulary the data's sidecar records (an IndexError mid-run before), and a context
    longer than the whole prefix (Megatron-Core would wrap one sample round the data)."""
    from megadoc_data.datasets import VocabOnlyTokenizer, single_prefix_dataset

    with pytest.raises(MegadocError, match=f"written by a tokenizer of {SMOLLM2_VOCAB:,} ids, more than the "
                                           "vocabulary of 1,000 here"):
        single_prefix_dataset(data["smollm2"], VocabOnlyTokenizer(1000), 64, 1)
    with pytest.raises(MegadocError, match=r"tokens, fewer than one window of seq_length \+ 1 = 100001"):
        single_prefix_dataset(data["smollm2"], VocabOnlyTokenizer(SMOLLM2_VOCAB), 100_000, 1)


def test_eval_checks_the_embedded_tokenizer_too(data):
    """A checkpoint trained with `--tokenizer-model smollm2` records the name, not a path: eval still checks the data
    against it, so a prefix of another tokenizer (same uint16 dtype) is refused instead of scored."""
    from megadoc.evaluation.evaluate import open_prefix, trained_tokenizer
    from megadoc.preprocess.tokenizer import TokenizerSpec
    from megadoc.recipes.models import MODELS, TrainingRecipe

    recipe = TrainingRecipe(model=MODELS["tiny"], vocab_size=SMOLLM2_VOCAB, tokenizer=TokenizerSpec("smollm2"))
    with pytest.raises(MegadocError, match="fingerprints differ"):
        open_prefix(data["sp_data"], SMOLLM2_VOCAB, trained_tokenizer(recipe))


def test_a_closed_pipe_ends_quietly(data):
    """`megadoc inspect P --show 0 | head -1`: the reader goes away; the stage ends as SIGPIPE ends a Unix tool
    (exit 141, nothing on stderr), not in an internal error."""
    inspect = subprocess.Popen(MEGADOC + ["inspect", data["smollm2"], "--show", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    inspect.stdout.close()  # before it writes: its first write meets a pipe without a reader
    assert inspect.wait(timeout=60) == 141
    assert inspect.stderr.read() == b""
