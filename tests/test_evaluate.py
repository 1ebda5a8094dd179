"""`megadoc eval` on a tiny model trained with real Megatron-Core on CPU: its losses equal a plain forward pass on
the same windows, training lowers them, TP=2 under torchrun gives the world-1 numbers, the registry row gets
them, and bad inputs stop with one line.

The data is real DCLM text tokenized with Llama 3 and relabelled densely, as in test_cpu_train.py: training on
documents 0-59, i.i.d. validation on 60-99, long documents 100-139, short-document set 140-159 (disjoint).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megadoc.errors import MegadocError


BIN = Path(sys.executable).parent
VOCAB = 14_336  # the dense ids of documents 0-159 (13,978), rounded up to a multiple of 256 (TP=2 splits it)
SPLITS = {"train": (0, 60), "iid": (60, 100), "long": (100, 140), "short": (140, 160)}
SEQ = 64  # the tiny recipe's context
EVAL_FLAGS = ["--bucket-size", "8", "--beyond", "16", "48", "--micro-batch-size", "3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, dclm_sample, llama3_hf, write_prefix) -> dict[str, str]:
    from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer

    tokenizer = build_tokenizer(TokenizerSpec(str(llama3_hf)))
    texts = [json.loads(line)["text"] for line in dclm_sample.read_text().splitlines()[:SPLITS["short"][1]]]
    dense = {tokenizer.eod: 0}
    documents = [[dense.setdefault(i, len(dense)) for i in ids] + [0] for ids in tokenizer.encode_batch(texts)]
    assert len(dense) <= VOCAB
    folder = tmp_path_factory.mktemp("data")
    return {name: write_prefix(str(folder / name), documents[a:b]) for name, (a, b) in SPLITS.items()}


def _megadoc(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """Run megadoc in a fresh process: one thread (a tiny model gains nothing from more, and a busy machine makes
    two threads many times slower), and not the rendezvous port this process's own Megatron setup took."""
    command = [str(BIN / "megadoc"), *args]
    if nproc > 1:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), *command]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus) -> Path:
    """8 steps of the tiny recipe on the training documents, saved at steps 2, 4, 6 and 8."""
    save = tmp_path_factory.mktemp("ckpt") / "run"
    _megadoc("train", "--recipe", "tiny", "--vocab-size", str(VOCAB), "--data-path", corpus["train"],
             "--train-iters", "8", "--global-batch-size", "8", "--micro-batch-size", "4", "--lr", "3e-3",
             "--seed", "7", "--save", str(save), "--save-interval", "2")
    return save


def _eval(checkpoint: Path, corpus: dict, out: Path, *flags: str, nproc: int = 1) -> dict:
    _megadoc("eval", "--load", str(checkpoint), "--valid-path", corpus["iid"], "--long-valid-path", corpus["long"],
             "--short-valid-path", corpus["short"], "--output-dir", str(out), *EVAL_FLAGS, *flags, nproc=nproc)
    return json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def world1(tmp_path_factory, checkpoint, corpus) -> tuple[Path, dict]:
    """One world-1 evaluation of the trained checkpoint, recorded in a runs registry."""
    from megadoc.training.registry import RunRecord, record_run

    root = tmp_path_factory.mktemp("eval")
    record_run(root / "runs.csv", RunRecord(run="tiny-real", method="real", generations=0, real_tokens=1000,
                                            real_epochs=1.0, synthetic_fraction=None, lr=3e-3, weight_decay=0.8))
    out = root / "evals" / "tiny-real"
    return out, _eval(checkpoint, corpus, out, "--registry", str(root / "runs.csv"), "--run", "tiny-real")


def _direct_losses(checkpoint: Path, windows) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) of the cross-entropy by window position, from the model's logits in a plain forward pass."""
    import torch
    import torch.nn.functional as F
    from megatron.core import dist_checkpointing

    from megadoc.recipes.models import ParallelRecipe
    from megadoc.training.checkpoints import inference_recipe, load_run_config
    from megadoc.training.runtime import build_model, start

    start(ParallelRecipe(), 1)
    model = build_model(inference_recipe(load_run_config(str(checkpoint)).recipe, ParallelRecipe()))
    path = checkpoint / f"iter_{int((checkpoint / 'latest_checkpointed_iteration.txt').read_text()):07d}"
    model.load_state_dict(dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))["model"])
    model.eval()
    sums, counts = np.zeros(SEQ), np.zeros(SEQ, dtype=np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        for start in range(0, len(windows), 32):
            batch = torch.stack(windows[start:start + 32]).long()
            tokens, labels = batch[:, :-1], batch[:, 1:]
            logits = model(tokens, torch.arange(SEQ).expand_as(tokens), None).float()
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
            sums += losses.view(len(batch), SEQ).double().sum(0).numpy()
            counts += len(batch)
    torch.set_num_threads(threads)
    return sums, counts


def test_losses_equal_a_direct_forward_pass(world1, checkpoint, corpus):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megadoc.evaluation.evaluate import open_prefix, packed_windows
    from megadoc.evaluation.metrics import load_curve

    out, results = world1
    # Long set: one window per document of >= SEQ + 1 tokens, from its first token, read here straight from disk.
    long_docs = IndexedDataset(corpus["long"])
    windows = [torch.from_numpy(long_docs[i][:SEQ + 1].astype(np.int64)) for i in range(len(long_docs))
               if len(long_docs[i]) > SEQ]
    assert results["long_windows"] == len(windows) and results["long_skipped_documents"] == len(long_docs) - len(windows)
    sums, counts = _direct_losses(checkpoint, windows)
    curve = load_curve(out / "loss_by_position.json")
    assert curve.seq_length == SEQ and curve.bucket_size == 8 and curve.tokens == [8 * len(windows)] * 8
    expected = [sums[i:i + 8].sum() / counts[i:i + 8].sum() for i in range(0, SEQ, 8)]
    assert curve.loss == pytest.approx(expected, abs=1e-5)
    assert results["long_loss"] == pytest.approx(sums.sum() / counts.sum(), abs=1e-5) == curve.mean
    assert results["mean_beyond"] == pytest.approx({"16": sums[16:].sum() / counts[16:].sum(),
                                                    "48": sums[48:].sum() / counts[48:].sum()}, abs=1e-5)

    # i.i.d. set: every window of the packed documents once, as GPTDataset packs them for training.
    iid_docs = open_prefix(corpus["iid"], VOCAB)
    packed = packed_windows(corpus["iid"], SEQ, VOCAB)
    total = int(iid_docs.sequence_lengths.sum())
    assert len(packed) == (total - 1) // SEQ and results["iid_tokens"] == len(packed) * SEQ
    windows = [torch.cat([packed[i]["tokens"], packed[i]["labels"][-1:]]) for i in range(len(packed))]
    sums, counts = _direct_losses(checkpoint, windows)
    assert results["iid_loss"] == pytest.approx(sums.sum() / counts.sum(), abs=1e-5)
    assert (out / "loss_by_position.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_lowers_the_loss(tmp_path, world1, checkpoint, corpus):
    """The same checkpoint folder at step 2 (tracker rewound) scores worse than at step 8 on every set."""
    _, trained = world1
    early = tmp_path / "early"
    early.mkdir()
    shutil.copytree(checkpoint / "iter_0000002", early / "iter_0000002")
    shutil.copy(checkpoint / "megadoc_recipe.json", early)
    (early / "latest_checkpointed_iteration.txt").write_text("2\n")
    results = _eval(early, corpus, tmp_path / "out")
    assert results["iteration"] == 2 and trained["iteration"] == 8
    for key in ("iid_loss", "long_loss", "short_loss"):
        assert trained[key] < results[key] - 0.1, key


@pytest.mark.parametrize("flag", ["--tensor-model-parallel-size", "--pipeline-model-parallel-size"])
def test_two_way_model_parallel_eval_matches_world1(tmp_path, world1, checkpoint, corpus, flag):
    from megadoc.evaluation.metrics import load_curve

    out, single = world1
    results = _eval(checkpoint, corpus, tmp_path / "tp2", flag, "2", nproc=2)
    for key in ("iid_loss", "long_loss", "short_loss"):
        assert results[key] == pytest.approx(single[key], abs=1e-4), key
    assert {k: v for k, v in results.items() if not k.endswith("_loss") and k != "mean_beyond"} == \
        {k: v for k, v in single.items() if not k.endswith("_loss") and k != "mean_beyond"}
    curve = load_curve(tmp_path / "tp2" / "loss_by_position.json")
    assert curve.loss == pytest.approx(load_curve(out / "loss_by_position.json").loss, abs=1e-4)


def test_data_parallel_ranks_share_every_window_once():
    from megadoc.evaluation.evaluate import micro_batches

    ranks = [micro_batches(10, 3, rank, 2) for rank in range(2)]
    assert ranks == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, -1, -1]]]
    assert sorted(i for rank in ranks for batch in rank for i in batch if i >= 0) == list(range(10))


def test_registry_row_gets_the_results(world1):
    from megadoc.training.registry import read_registry

    out, results = world1
    (row,) = read_registry(out.parents[1] / "runs.csv")
    assert (row.iid_loss, row.long_loss, row.short_loss) == (results["iid_loss"], results["long_loss"],
                                                             results["short_loss"])
    assert row.loss_by_position == "evals/tiny-real/loss_by_position.json"
    assert set(results) >= {"checkpoint", "iteration", "recipe", "seq_length", "iid_tokens", "long_tokens",
                            "short_tokens", "mean_beyond"} and results["recipe"] == "tiny"


def _bad(tmp_path, checkpoint, corpus, write_prefix):
    """name -> (flags, the error's expected words)."""
    no_recipe = tmp_path / "no_recipe"
    shutil.copytree(checkpoint, no_recipe)
    (no_recipe / "megadoc_recipe.json").unlink()
    big_vocab = tmp_path / "big_vocab"
    shutil.copytree(checkpoint, big_vocab)
    recipe = json.loads((big_vocab / "megadoc_recipe.json").read_text())
    recipe["recipe"]["vocab_size"] = 128_256
    (big_vocab / "megadoc_recipe.json").write_text(json.dumps(recipe))
    uint16 = write_prefix(str(tmp_path / "uint16"), [[1, 2, 3] * 40], dtype=np.uint16)
    foreign = write_prefix(str(tmp_path / "foreign"), [[1, VOCAB + 5] * 40])
    short = write_prefix(str(tmp_path / "short"), [[1, 2, 3]] * 10)
    other_size = tmp_path / "other_size"  # weights of the tiny model, a run config that says a wider one
    shutil.copytree(checkpoint, other_size)
    recipe = json.loads((other_size / "megadoc_recipe.json").read_text())
    recipe["recipe"]["model"].update(hidden_size=128, ffn_hidden_size=448)
    (other_size / "megadoc_recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "runs.csv").write_text("run,method,generations,real_tokens,real_epochs,synthetic_fraction,lr,"
                                       "weight_decay\nother,real,0,1,1.0,,0.003,0.8\n")
    return {
        "no checkpoint": (["--load", str(tmp_path / "nowhere")], "no latest_checkpointed_iteration.txt"),
        "no recipe": (["--load", str(no_recipe)], "megadoc_recipe.json: missing"),
        "no prefix": (["--valid-path", str(tmp_path / "missing")], "missing.idx: no such file"),
        "foreign ids": (["--valid-path", foreign], f"token id {VOCAB + 5} is outside the checkpoint's vocabulary"),
        "dtype": (["--load", str(big_vocab), "--valid-path", uint16], "uint16 tokens"),
        "iid too short": (["--valid-path", short], "fewer than one window"),
        "no long document": (["--long-valid-path", short], "none of its 10 documents has seq_length + 1 = 65 tokens"),
        "beyond": (["--beyond", "64"], "--beyond: positions run 0..63"),
        "registry alone": (["--registry", str(tmp_path / "runs.csv")], "not recorded in a registry; give --run-name"),
        "other size": (["--load", str(other_size)], "its weights do not fit the model its run config describes"),
        "run alone": (["--run-name", "tiny"], "give --registry too"),
        "unknown run": (["--registry", str(tmp_path / "runs.csv"), "--run", "tiny"], "no run named 'tiny'"),
    }


def test_bad_inputs_stop_with_one_line(tmp_path, capsys, checkpoint, corpus, write_prefix):
    from megadoc.cli import main

    for name, (flags, words) in _bad(tmp_path, checkpoint, corpus, write_prefix).items():
        base = {"--load": str(checkpoint), "--valid-path": corpus["iid"], "--output-dir": str(tmp_path / "out")}
        args = [item for key, value in base.items() if key not in flags for item in (key, value)]
        assert main(["eval", *args, *flags]) == 1, name
        error = capsys.readouterr().err
        assert error.startswith("megadoc eval: error: ") and words in error and error.count("\n") == 1, (name, error)
        assert not (tmp_path / "out").exists(), name


def test_resuming_a_checkpoint_of_another_model_fails_in_one_line(tmp_path, capsys, checkpoint, corpus):
    from megadoc.cli import main

    assert main(["train", "--recipe", "150m", "--vocab-size", str(VOCAB), "--data-path", corpus["train"],
                 "--train-iters", "1", "--save", str(checkpoint), "--load", str(checkpoint)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds a tiny model (hidden 64, 2 layers, seq 64); this run trains 150m" in error


def test_export_to_hugging_face_reproduces_the_logits(tmp_path, checkpoint):
    """`megadoc export` of a megadoc train checkpoint: transformers' LlamaForCausalLM on the exported folder computes
    the Megatron-Core model's logits (both fp32: max |difference| < 1e-5, on logits of magnitude ~10)."""
    import torch
    from transformers import AutoModelForCausalLM

    from megadoc.recipes.models import ParallelRecipe
    from megadoc.training.checkpoints import load_model
    from megadoc.training.export import export
    from megadoc.training.runtime import start

    out = export(str(checkpoint), str(tmp_path / "hf"))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # a vocabulary, no tokenizer
    start(ParallelRecipe(), 1)
    model = load_model(str(checkpoint)).model
    tokens = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        megatron = model(tokens, torch.arange(SEQ).expand_as(tokens), None).float()
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(tokens).logits
    assert hf.shape == megatron.shape == (3, SEQ, VOCAB)
    assert (hf - megatron).abs().max().item() < 1e-5 and megatron.abs().max().item() > 1
    with pytest.raises(MegadocError, match="already exists"):
        export(str(checkpoint), str(out))
