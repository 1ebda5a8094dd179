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
    "generate": {"rephrases": 8, "rationales": 4, "num_shards": 3, "model": "/models/llama-8b",
                 "tensor_parallel_size": 2, "engine_args": ["--engine-arg", "max_num_seqs=64"]},
    "slurm": {"generate": {"gpus_per_node": 8}},
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
    assert generate.engines == 4  # every GPU of the node busy: 8 GPUs / 2 per engine
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
    ({"generate": {"tensor_parallel_size": 3}}, "gpus_per_node 8 is not a multiple of generate.tensor_parallel_size 3"),
    ({"generate": {"engine_args": ["--tensor-parallel-size", "2"]}}, "set generate.tensor_parallel_size instead"),
    ({"slurm": {"generate": {"array_limit": 0}}}, "slurm.generate.array_limit: 0 must be >= 1"),
    ({"slurm": {"max_array_size": 0}}, "slurm.max_array_size: 0 must be >= 1"),
])
def test_bad_values_fail_in_one_line(tmp_path, change, words):
    with pytest.raises(MegadocError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(_write(tmp_path, {**FULL, **change}))


def test_bridge_backend_launches_the_megadoc_recipe_through_pretrain(tmp_path):
    """train.backend: bridge turns each train step into `megadoc pretrain <recipe> key=value ...`: the recipe
    function's arguments (typed as it annotates them) carry the same run as `megadoc train`'s flags, and evaluation
    reads Bridge's checkpoint folder. A pipeline with GPUs for training defaults to it, one without to core."""
    import inspect

    from megadoc.recipes.bridge import pretrain_config
    from megadoc.training.bridge import model_name, recipe_arguments

    path = _write(tmp_path, {**FULL, "train": {**FULL["train"], "backend": "bridge",
                                               "bridge_overrides": ["wandb_project=megadoc", "model.seq_length=512"]}})
    config = load_pipeline(path)
    work = tmp_path / "work"
    commands = {step.name: step.commands[0] for step in steps(config)}
    for method in ("real", "simple", "stitched", "stretched"):
        args = build_parser("pretrain").parse_args(commands[f"train-{method}"][1:])
        kwargs, overrides = recipe_arguments(args.overrides)
        inspect.signature(pretrain_config).bind(model_name(args.recipe), **kwargs)  # every argument is the recipe's
        assert (args.recipe, args.registry, args.method) == ("300m", str(work / "runs.csv"), method)
        assert (kwargs["tokenizer_model"], kwargs["tokenizer_type"], kwargs["real_path"], kwargs["valid_paths"]) == \
            ("tok/llama3", "HuggingFaceTokenizer", str(work / "tokens" / "train"), [str(work / "tokens" / "valid_iid")])
        assert (kwargs["base_steps"], kwargs["save_interval"], kwargs["tensor_model_parallel_size"], kwargs["lr"]) == \
            (7, 5, 2, 3e-3)
        assert kwargs["output_dir"] == str(work / "runs" / method) and kwargs["wandb_project"] == "megadoc"
        assert overrides == ["model.seq_length=512"]
        evaluate = build_parser("eval").parse_args(commands[f"eval-{method}"][1:])
        assert evaluate.load == [str(work / "runs" / method / "checkpoints")]
        if method == "real":
            assert (kwargs["real_epochs"], kwargs["weight_decay"], args.generations) == (16, 1.6, 0)
            assert "synthetic_paths" not in kwargs and "synthetic_fraction" not in kwargs
        else:
            assert (kwargs["real_epochs"], kwargs["synthetic_fraction"], kwargs["weight_decay"]) == (8, 0.75, 0.8)
            assert kwargs["synthetic_paths"] == [str(work / "tokens" / method)] and args.generations in (8, 4)

    for bad, words in (("lr=fast", "lr=fast: expected float"), ("synthetic_paths=a", "expected list"),
                       ("seed=null", "seed=null: expected int")):
        with pytest.raises(MegadocError, match=words):
            recipe_arguments([bad])

    gpus = {"slurm": {"train": {"gpus_per_node": 8, "cpus_per_task": 16}}}
    assert load_pipeline(_write(tmp_path, {**FULL, **gpus})).train_backend == "bridge"
    assert load_pipeline(_write(tmp_path, FULL)).train_backend == "core"


@pytest.mark.parametrize("change, words", [
    ({"train": {"backend": "nemo"}}, "train.backend: 'nemo' is not one of bridge, core"),
    ({"train": {"context_parallel_size": 2}}, "need train.backend: bridge"),
    ({"train": {"backend": "bridge"}, "tokenizer": {"model": "llama3.tiktoken"}}, "not tiktoken files"),
    ({"train": {"nproc_per_node": 8}, "slurm": {"train": {"cpus_per_task": 2}}},
     "slurm.train.cpus_per_task: 2 CPUs for the 8 ranks"),
])
def test_trainer_settings_fail_in_one_line(tmp_path, change, words):
    with pytest.raises(MegadocError, match=words):
        load_pipeline(_write(tmp_path, {**FULL, **change}))


def test_cpus_per_task_default_to_three_per_rank(tmp_path):
    config = load_pipeline(_write(tmp_path, {**FULL, "train": {**FULL["train"], "nproc_per_node": 8}}))
    assert [config.cpus_per_task(kind) for kind in ("cpu", "generate", "train", "eval")] == [2, 2, 24, 24]


def test_data_budgets_seeds_and_ablations_become_runs(tmp_path):
    """Budgets become nested split subsets, tokenized and trained real-only with their own settings; seeds repeat
    runs (the data law's own seeds for real only); each ablation preset is a run under its own method name, on its
    own stream where its assembly differs; every command parses under its stage's parser."""
    config = load_pipeline(_write(tmp_path, {
        **FULL, "methods": ["simple", "stitched"], "seeds": [1, 2],
        "split": {**FULL["split"], "short_docs": 4, "short_max_tokens": 50},
        "data_budgets": {"budgets": [0.25, {"budget": 0.5, "real_epochs": 8, "weight_decay": 0.8}], "seeds": [1, 2, 3]},
        "ablations": ["real-first", "no-real-copy", "random-order", "block-cross-document-attention",
                      "no-real-data"]}))
    parsed = {step.name: [build_parser(c[0]).parse_args(c[1:] + (["--shard-index", "0"] if step.array else []))
                          for c in step.commands] for step in steps(config)}
    (split,) = parsed["split"]
    assert (split.budgets, split.short_docs, split.short_max_tokens) == ([0.25, 0.5], 4, 50)
    tokenized = {args.output_prefix.rsplit("/", 1)[1] for args in parsed["tokenize"]}
    assert tokenized == {"train", "valid_iid", "valid_long", "valid_short", "budget-0.25", "budget-0.5"}
    train = {name.removeprefix("train-"): args[0] for name, args in parsed.items() if name.startswith("train-")}
    real = ["real", "real-seed2"] + [f"real{b}{s}" for b in ("-b0.25", "-b0.5") for s in ("", "-seed2", "-seed3")]
    ablations = ["stitched-real-first", "stitched-no-real-copy", "simple-no-real-copy", "stitched-random-order",
                 "real-blocked-attention", "simple-blocked-attention", "stitched-blocked-attention",
                 "stitched-no-real-data"]
    assert sorted(train) == sorted(real + [f"{m}{s}" for m in ["simple", "stitched", *ablations]
                                           for s in ("", "-seed2")])
    half = train["real-b0.5-seed3"]
    assert (half.real_path[0].endswith("/tokens/budget-0.5"), half.real_epochs, half.weight_decay, half.seed,
            half.base_steps, half.method) == (True, 8, 0.8, 3, None, "real")
    assert (train["real-b0.25"].real_epochs, train["real-b0.25"].weight_decay, train["real"].base_steps) == (16, 1.6, 7)
    first = train["stitched-real-first-seed2"]
    assert first.synthetic_path[0].endswith("/tokens/stitched-real-first") and first.seed == 2
    assembled = {name.removeprefix("assemble-"): args[0] for name, args in parsed.items() if name.startswith("assemble")}
    assert (assembled["stitched-real-first"].real_position, assembled["simple-no-real-copy"].real_position,
            assembled["stitched-random-order"].order) == ("first", "none", "random")
    assert set(assembled) == {"simple", "stitched", "stitched-real-first", "stitched-no-real-copy",
                              "simple-no-real-copy", "stitched-random-order"}
    blocked = train["stitched-blocked-attention"]
    assert blocked.block_cross_document_attention and blocked.synthetic_path[0].endswith("/tokens/stitched")
    assert train["real-blocked-attention"].block_cross_document_attention and not train["real"].block_cross_document_attention
    alone = train["stitched-no-real-data"]
    assert alone.real_path[0].endswith("/tokens/stitched") and alone.real_tokens_from.endswith("/tokens/train")
    assert alone.synthetic_path == [] and alone.method == "stitched-no-real-data"
    assert {name for name in parsed if name.startswith("eval-")} == {f"eval-{key}" for key in train}
    assert all(args[0].short_valid_path.endswith("/tokens/valid_short") for name, args in parsed.items()
               if name.startswith("eval-"))
    (report,) = [step for step in steps(config) if step.name == "report"]
    assert set(report.after) == {f"eval-{key}" for key in train}


@pytest.mark.parametrize("change, words", [
    ({"data_budgets": {"budgets": [0.5, 1]}}, "not 1 (the full split always runs)"),
    ({"data_budgets": {"budgets": [{"budget": 0.5, "epochs": 3}]}}, "data_budgets.budgets[0]: unknown key(s) epochs"),
    ({"seeds": [1, 1]}, "seeds: [1, 1] must be distinct"),
    ({"ablations": ["nope"]}, "'nope' is not one of"),
    ({"generate": {"rephrases": None}, "methods": ["stretched"], "ablations": ["no-real-copy"]},
     "stitched-no-real-copy needs rephrases"),
])
def test_bad_experiments_fail_in_one_line(tmp_path, change, words):
    with pytest.raises(MegadocError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_pipeline(_write(tmp_path, {**FULL, **change}))


def test_methods_on_a_budget_and_the_law_beyond_it(tmp_path):
    """data_budgets.methods: generation, assembly and the methods' real stream come from that budget (which also
    runs real only), while the law's larger budgets and the full split reach past it."""
    config = load_pipeline(_write(tmp_path, {**FULL, "methods": ["stitched"], "ablations": ["no-real-data",
                                                                                           "block-cross-document-attention"],
                                             "data_budgets": {"budgets": [0.5, 0.1], "methods": 0.25}}))
    parsed = {step.name: [build_parser(c[0]).parse_args(c[1:] + (["--shard-index", "0"] if step.array else []))
                          for c in step.commands] for step in steps(config)}
    assert sorted(parsed["split"][0].budgets) == [0.1, 0.25, 0.5]
    assert parsed["generate-rephrase"][0].input == [str(tmp_path / "work/split/budgets/0.25.jsonl")]
    assert parsed["assemble-stitched"][0].input == [str(tmp_path / "work/split/budgets/0.25.jsonl")]
    budget = str(tmp_path / "work/tokens/budget-0.25")
    assert parsed["train-stitched"][0].real_path == [budget] == parsed["train-real-b0.25"][0].real_path
    assert parsed["train-stitched-no-real-data"][0].real_tokens_from == budget
    assert parsed["train-real-blocked-attention"][0].real_path == [budget]
    assert parsed["train-real"][0].real_path == [str(tmp_path / "work/tokens/train")]
    assert {name for name in parsed if name.startswith("train-real-b") and name[12].isdigit()} == \
        {"train-real-b0.1", "train-real-b0.25", "train-real-b0.5"}
