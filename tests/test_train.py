"""`megadoc train` with real Megatron-Core on CPU: the loss falls at world 1, TP=2 and PP=2 (torchrun, gloo), and a
run saved at step 4 and resumed in a fresh process logs exactly the losses of an uninterrupted run.

The data is real DCLM text tokenized with Llama 3, its ids relabelled densely (order of first appearance) so the
tiny model's embedding is ~8K rows instead of 128K: the token stream is the same, only the names of tokens change.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest


BIN = Path(sys.executable).parent
VOCAB = 8192
COMMON = ["--recipe", "tiny", "--vocab-size", str(VOCAB), "--train-iters", "8", "--global-batch-size", "8",
          "--lr", "3e-3", "--seed", "7"]


@pytest.fixture(scope="module")
def dense_documents(dclm_sample, llama3_hf) -> list[list[int]]:
    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    texts = [json.loads(line)["text"] for line in dclm_sample.read_text().splitlines()[:60]]
    dense = {tokenizer.eod: 0}
    documents = [[dense.setdefault(i, len(dense)) for i in ids] + [0] for ids in tokenizer.encode_batch(texts)]
    assert len(dense) < VOCAB
    return documents


@pytest.fixture(scope="module")
def data_prefix(tmp_path_factory, dense_documents, write_prefix) -> str:
    return write_prefix(str(tmp_path_factory.mktemp("data") / "dclm"), dense_documents, "int32")


def _train(save: Path, data_prefix: str, *flags: str, nproc: int = 1) -> list[dict]:
    """Run `megadoc train` in a fresh process (under torchrun when nproc > 1); the JSONL log's records."""
    command = [str(BIN / "megadoc"), "train", "--data-path", data_prefix, "--save", str(save), *COMMON, *flags]
    if nproc > 1:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (save / "train_log.jsonl").read_text().splitlines()]


def _curve(records: list[dict]) -> list[tuple]:
    return [(r["iteration"], r["consumed_samples"], r["loss"], r["lr"], r["grad_norm"]) for r in records]


def test_schedule_warms_up_then_decays_to_zero():
    from megadoc.recipes.models import OptimizerRecipe
    from megadoc.training.loop import learning_rate

    opt = OptimizerRecipe(lr=1e-3)
    lrs = [learning_rate(step, 1000, opt) for step in range(1, 1001)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[4] == pytest.approx(5e-4)  # 1% warmup = 10 steps
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[505] == pytest.approx(5e-4, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_sampler_splits_global_batches_over_data_parallel_ranks():
    from megadoc.training.loop import PretrainingSampler

    ranks = [list(PretrainingSampler(16, 4, 2, rank, 2)) for rank in range(2)]
    assert ranks[0] == [[4, 5], [8, 9], [12, 13]] and ranks[1] == [[6, 7], [10, 11], [14, 15]]


def test_world1_loss_falls_and_resume_is_exact(tmp_path, data_prefix):
    full = _train(tmp_path / "full", data_prefix, "--micro-batch-size", "4")
    assert [r["iteration"] for r in full] == list(range(1, 9))
    assert full[-1]["loss"] < full[0]["loss"] - 0.1

    _train(tmp_path / "resumed", data_prefix, "--micro-batch-size", "4", "--save-interval", "4",
           "--exit-interval", "4")
    assert (tmp_path / "resumed" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    resumed = _train(tmp_path / "resumed", data_prefix, "--micro-batch-size", "4", "--load", str(tmp_path / "resumed"))
    assert _curve(resumed) == _curve(full)


@pytest.mark.parametrize("flag", ["--tensor-model-parallel-size", "--pipeline-model-parallel-size"])
def test_two_way_model_parallel_loss_falls(tmp_path, data_prefix, flag):
    records = _train(tmp_path / "run", data_prefix, flag, "2", "--micro-batch-size", "2", nproc=2)
    assert [r["iteration"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"] - 0.1


def test_run_config_and_registry_row_record_the_plan_trained(tmp_path, dense_documents, write_prefix):
    """E = 3 and r = 0.5 in the blend flags are what megadoc_recipe.json and the registry row say."""
    from megadoc.training.checkpoints import load_run_config
    from megadoc.training.registry import read_registry

    folder = tmp_path / "data"
    folder.mkdir()
    real = write_prefix(str(folder / "real"), dense_documents[:30], "uint16")  # vocabulary < 65,500: uint16
    synthetic = write_prefix(str(folder / "synthetic"), dense_documents[30:], "uint16")
    save, registry = tmp_path / "run", tmp_path / "runs.csv"
    command = [str(BIN / "megadoc"), "train", "--recipe", "tiny", "--vocab-size", str(VOCAB), "--real-path", real,
               "--synthetic-path", synthetic, "--real-epochs", "3", "--synthetic-fraction", "0.5", "--base-steps",
               "1", "--global-batch-size", "8", "--micro-batch-size", "8", "--save", str(save), "--registry",
               str(registry), "--method", "stitched", "--generations", "4", "--block-cross-document-attention"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run_config(str(save))
    assert run.plan["real_epochs"] == 3 and run.plan["synthetic_fraction"] == 0.5 and run.train_iters == 6
    assert run.blend["real_epochs"] == 3 and run.blend["synthetic_fraction"] == 0.5
    assert run.blend["block_cross_document_attention"] and run.block_cross_document_attention
    (row,) = read_registry(registry)
    assert (row.real_epochs, row.synthetic_fraction, row.generations, row.method) == (3, 0.5, 4, "stitched")
    assert row.run == run.name == "tiny-512x3-real+stitched4^0.5-cos-lr0.0030-wd0.80-bs8"
    assert row.checkpoint == str(save.resolve())
    assert len((save / "train_log.jsonl").read_text().splitlines()) == 6


def test_eod_id_reaches_the_tokenizer_of_train(llama3_hf):
    from megadoc.cli import build_parser
    from megadoc.training.cli import recipe_and_tokenizer

    args = build_parser("train").parse_args(["--tokenizer-model", str(llama3_hf), "--eod-id", "128002",
                                             "--data-path", "unused", "--train-iters", "1"])
    recipe, tokenizer = recipe_and_tokenizer(args)
    assert tokenizer.eod == 128_002 and recipe.tokenizer.eod_id == 128_002 and recipe.vocab_size == 128_256


def test_weight_decay_mask_spares_embeddings_and_norms_and_decays_the_output_layer():
    """levanter's mask (the paper's trainer): Linear weights decay, the untied output layer included; the input
    embedding and the norms do not. One step on zero gradients is pure decay: p * (1 - lr * wd), or p untouched."""
    import torch

    from megadoc.recipes.models import MODELS, OptimizerRecipe, TrainingRecipe
    from megadoc.training.loop import build_optimizer, set_schedule
    from megadoc.training.runtime import build_model, start, wrap_ddp

    recipe = TrainingRecipe(model=MODELS["tiny"], vocab_size=512, optimizer=OptimizerRecipe(lr=0.1, weight_decay=0.5))
    start(recipe.parallel, 3)
    model = wrap_ddp(build_model(recipe))
    optimizer = build_optimizer(model, recipe)
    names = {id(p): name.removeprefix("module.") for name, p in model.named_parameters()}
    groups = {mult: {names[id(p)] for g in optimizer.param_groups if g["wd_mult"] == mult for p in g["params"]}
              for mult in (0.0, 1.0)}
    norms = {f"decoder.layers.{i}.{norm}.weight" for i in (0, 1) for norm in ("input_layernorm", "pre_mlp_layernorm")}
    assert groups[0.0] == {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight", *norms}
    linears = {f"decoder.layers.{i}.{linear}.weight" for i in (0, 1) for linear in
               ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")}
    assert groups[1.0] == {"output_layer.weight", *linears}
    assert groups[0.0] | groups[1.0] == set(names.values())

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.zero_grad_buffer()
    optimizer.zero_grad()
    set_schedule(optimizer, 0.1, recipe.optimizer)
    optimizer.step()
    for name, p in model.named_parameters():
        shrink = 1.0 if name.removeprefix("module.") in groups[0.0] else 1 - 0.1 * 0.5
        assert torch.allclose(p.detach(), before[name] * shrink, rtol=1e-6, atol=0), name


def test_blocked_cross_document_attention_scores_each_document_alone(tmp_path, dense_documents, write_prefix):
    """With --block-cross-document-attention a packed window's second document is scored exactly as if it stood
    alone at the start of a window (Megatron's EOD masks; RoPE makes the position reset immaterial); with
    attention across documents (the paper's default) its tokens see the first document and score differently."""
    import numpy as np
    import torch

    from megadoc.recipes.models import MODELS, TrainingRecipe
    from megadoc.training.runtime import build_model, start
    from megadoc_data.datasets import VocabOnlyTokenizer, single_prefix_dataset

    short = [doc[:20] + [0] for doc in dense_documents[:12]]  # 21-token documents (EOD last)
    prefix = write_prefix(str(tmp_path / "short"), short, "int32")
    blocked = single_prefix_dataset(prefix, VocabOnlyTokenizer(VOCAB), 64, 3, block_cross_document_attention=True)
    sample = blocked[0]
    eods = np.flatnonzero(sample["tokens"].numpy() == 0)
    first = int(eods[0]) + 1  # where the second document starts
    assert sample["position_ids"][first] == 0 and sample["position_ids"][first - 1] == first - 1
    mask = sample["attention_mask"][0]  # True: may not attend
    assert mask[first, first - 1] and not mask[first, first] and not mask[first - 1, 0]

    start(TrainingRecipe(model=MODELS["tiny"]).parallel, 5)
    model = build_model(TrainingRecipe(model=MODELS["tiny"], vocab_size=VOCAB, bf16=False)).eval()
    tokens, labels = sample["tokens"][None], sample["labels"][None]
    with torch.no_grad():
        masked = model(tokens, sample["position_ids"][None], sample["attention_mask"][None], labels=labels)[0]
        across = model(tokens, torch.arange(64)[None], None, labels=labels)[0]
        second = slice(first, int(eods[1]))  # the second document's tokens, its EOD's label excluded
        alone = model(tokens[:, second], torch.arange(second.stop - first)[None], None, labels=labels[:, second])[0]
    assert torch.allclose(masked[second], alone, atol=1e-5)
    assert not torch.allclose(across[second], alone, atol=1e-3)
    assert torch.allclose(masked[:first], across[:first], atol=1e-5)  # the first document sees nothing before it
