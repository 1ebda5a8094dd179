"""The pipeline description: every command line it emits parses under its stage's own parser (flag drift fails
here in seconds), the tokenizer spec reaches every stage whole, overrides and YAML types are checked."""

import pytest
import yaml

from megadoc.cli import build_parser
from megadoc.errors import MegadocError
from megadoc.launch.pipeline import load_pipeline, steps

FULL = {
    "name": "full", "work_dir": "work", "corpus": ["a.jsonl", "b/*.jsonl.zst"], "json_key": "content",
    "tokenizer": {"model": "tok/llama3", "type": "HuggingFaceTokenizer", "eod_id": 128002,
                  "hf_include_special_tokens": True},
    "split": {"iid_docs": 3, "long_docs": 2, "long_min_tokens": 100},
    "generate": {"rephrases": 8, "rationales": 4, "num_shards": 3, "model": "/models/llama-8b", "engine_args":
                 ["--tensor-parallel-size", "2", "--engine-arg", "max_num_seqs=64"]},
    "train": {"recipe": "300m", "base_steps": 7, "save_interval": 5, "tensor_model_parallel_size": 2,
              "nproc_per_node": 2},
}


def _write(tmp_path, data) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_command_line_parses_under_its_stages_parser(tmp_path):
    config = load_pipeline(_write(tmp_path, FULL))
    parsed = {}
    for step in steps(config):
        for command in step.commands:
            shard = ["--shard-index", "0"] if step.array else []
            parsed[step.name] = build_parser(command[0]).parse_args(command[1:] + shard)  # exits on a stray flag
    assert {name.split("-")[0] for name in parsed} == {"split", "tokenize", "generate", "assemble", "train", "eval",
                                                       "report"}
    for name in ("split", "tokenize", "assemble-stitched", "train-real", "train-stretched"):
        args = parsed[name]
        assert (args.tokenizer_model, args.tokenizer_type, args.eod_id, args.tokenizer_hf_include_special_tokens) \
            == ("tok/llama3", "HuggingFaceTokenizer", 128002, True), name
    for name in ("split", "generate-rephrase", "assemble-simple"):
        assert parsed[name].json_keys == ["content"], name
    generate = parsed["generate-rationale"]
    assert (generate.generations, generate.num_shards, generate.tensor_parallel_size, generate.model) == \
        (4, 3, 2, "/models/llama-8b")
    train = parsed["train-stitched"]
    assert (train.real_epochs, train.synthetic_fraction, train.generations, train.base_steps, train.method) == \
        (8, 0.75, 8, 7, "stitched")
    assert parsed["train-real"].synthetic_path == [] and parsed["train-real"].weight_decay == 1.6


def test_overrides_and_relative_paths(tmp_path):
    config = load_pipeline(_write(tmp_path, FULL), ["train.lr=1e-3", "generate.rephrases=2", "methods=[simple]",
                                                    "slurm.train.nodes=4"])
    assert (config.train.lr, config.generate.rephrases, config.methods, config.slurm.train.nodes) == \
        (1e-3, 2, ["simple"], 4)
    assert config.work_dir == str(tmp_path / "work") and config.corpus[0] == str(tmp_path / "a.jsonl")
    with pytest.raises(MegadocError, match="expected key=value"):
        load_pipeline(_write(tmp_path, FULL), ["train.lr"])


@pytest.mark.parametrize("change, words", [
    ({"corpus": "a.jsonl"}, "corpus: expected a list, got str"),
    ({"slurm": {"cpu": {"setup": "source env"}}}, "slurm.cpu.setup: expected a list, got str"),
    ({"generate": {"rephrases": "four"}}, "generate.rephrases: expected int, got str"),
    ({"train": {"lr": "fast"}}, "train.lr: expected float, got str"),
    ({"train": {"nproc_per_node": True}}, "train.nproc_per_node: expected int, got bool"),
    ({"tokenizer": {"modle": "x"}}, "unknown key(s) modle"),
    ({"methods": ["simple", "nope"]}, "nope not in"),
])
def test_bad_values_fail_in_one_line(tmp_path, change, words):
    with pytest.raises(MegadocError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(_write(tmp_path, {**FULL, **change}))
