"""`megadoc eval` beyond one checkpoint's losses: the logit-averaged ensemble of several checkpoints (the paper's
ensembling), and lm-eval-harness tasks scored by the model itself, on a local multiple-choice task shipped with the
tests (tests/data/lm_eval: its dataset is a JSONL file beside the YAML, so nothing comes from the hub).

Two tiny models trained with real Megatron-Core on the 40 DCLM documents of tests/data, tokenized with a small
SentencePiece vocabulary trained on them (so a step costs milliseconds): one for 300 steps, one for 20.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE40 = ROOT / "tests" / "data" / "dclm_sample40.jsonl"
TASKS = ROOT / "tests" / "data" / "lm_eval"
TRAIN = ["--recipe", "tiny", "--global-batch-size", "8", "--micro-batch-size", "8", "--lr", "1e-2",
         "--weight-decay", "0.1", "--seed", "7"]


def _megadoc(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([str(BIN / "megadoc"), *args], capture_output=True, text=True, timeout=300, env=env,
                            cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dclm_sample) -> dict:
    """SentencePiece (1,000 pieces) on the 40 documents, their tokens, held-out DCLM documents, and two checkpoints
    of the tiny model: 300 steps ('trained') and 20 ('brief')."""
    import sentencepiece

    root = tmp_path_factory.mktemp("downstream")
    texts = [json.loads(line)["text"] for line in SAMPLE40.read_text().splitlines()]
    (root / "text.txt").write_text("\n".join(text.replace("\n", " ") for text in texts))
    sentencepiece.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "sp"),
                                             vocab_size=1000, num_threads=1, minloglevel=2)
    tokenizer = ["--tokenizer-model", str(root / "sp.model")]
    held_out = root / "held_out.jsonl"
    held_out.write_text("".join(dclm_sample.read_text().splitlines(keepends=True)[150:190]))
    for name, corpus in (("train", SAMPLE40), ("valid", held_out)):
        _megadoc("tokenize", "--input", str(corpus), "--output-prefix", str(root / name), "--append-eod",
                 "--no-progress", *tokenizer)
    for name, steps in (("trained", "300"), ("brief", "20")):
        _megadoc("train", *TRAIN, *tokenizer, "--data-path", str(root / "train"), "--train-iters", steps,
                 "--save", str(root / name))
    return {"root": root, "valid": str(root / "valid"), "trained": str(root / "trained"), "brief": str(root / "brief")}


def _eval(trained: dict, out: str, *flags: str, cwd=None) -> dict:
    _megadoc("eval", "--output-dir", str(trained["root"] / out), *flags, cwd=cwd)
    return json.loads((trained["root"] / out / "eval.json").read_text())


def test_ensemble_of_two_identical_checkpoints_scores_exactly_one(trained):
    one = _eval(trained, "one", "--load", trained["trained"], "--valid-path", trained["valid"])
    two = _eval(trained, "two", "--load", trained["trained"], trained["trained"], "--valid-path", trained["valid"])
    assert two["members"] == 2 and one["members"] == 1
    assert two["iid_loss"] == one["iid_loss"] and two["iid_tokens"] == one["iid_tokens"]


def _window_logits(load: str, windows) -> list:
    import torch

    from megadoc.evaluation.ensemble import load_member, read_member
    from megadoc.recipes.models import ParallelRecipe
    from megadoc.training.runtime import start

    start(ParallelRecipe(), 1)
    model, _ = load_member(read_member(load), ParallelRecipe())
    with torch.no_grad():
        return [model(w["tokens"][None], torch.arange(len(w["tokens"]))[None], None)[0].double() for w in windows]


def test_ensemble_averages_logits_not_probabilities(trained):
    """Two different members: the ensemble's loss is the cross-entropy of their mean logits (computed here from
    each model's own forward pass), which is not the loss of their mean probabilities."""
    import torch

    from megadoc.evaluation.evaluate import packed_windows

    pair = _eval(trained, "pair", "--load", trained["trained"], trained["brief"], "--valid-path", trained["valid"])
    windows = packed_windows(trained["valid"], 64, 1024)
    windows = [windows[i] for i in range(len(windows))]
    a, b = _window_logits(trained["trained"], windows), _window_logits(trained["brief"], windows)
    labels = torch.cat([w["labels"] for w in windows])
    mean_logits = torch.cat([(x + y) / 2 for x, y in zip(a, b)])
    logit_average = torch.nn.functional.cross_entropy(mean_logits, labels).item()
    mean_probs = torch.cat([(x.softmax(-1) + y.softmax(-1)) / 2 for x, y in zip(a, b)])
    probability_average = torch.nn.functional.nll_loss(mean_probs.log(), labels).item()
    assert pair["iid_loss"] == pytest.approx(logit_average, abs=1e-5)
    assert abs(probability_average - logit_average) > 1e-3


def test_ensemble_gets_its_own_registry_row(trained, tmp_path):
    from megadoc.training.registry import RunRecord, read_registry, record_run

    registry = tmp_path / "runs.csv"
    for name, seed in (("trained", 1), ("brief", 2)):
        recipe = json.loads((Path(trained[name]) / "megadoc_recipe.json").read_text())
        recipe["name"] = f"tiny-real-seed{seed}"
        copy = tmp_path / name
        shutil.copytree(trained[name], copy)
        (copy / "megadoc_recipe.json").write_text(json.dumps(recipe))
        record_run(registry, RunRecord(run=f"tiny-real-seed{seed}", method="real", generations=0, real_tokens=1000,
                                       real_epochs=1.0, synthetic_fraction=None, lr=1e-2, weight_decay=0.1, seed=seed))
    _eval(trained, "ens", "--load", str(tmp_path / "trained"), str(tmp_path / "brief"), "--valid-path",
          trained["valid"], "--registry", str(registry))
    rows = {row.run: row for row in read_registry(registry)}
    ensemble = rows["tiny-real-ens2"]
    assert ensemble.members == 2 and ensemble.seed is None and ensemble.iid_loss is not None
    assert ensemble.configuration() == rows["tiny-real-seed1"].configuration()


def test_local_lm_eval_task_accuracy_moves_with_the_model(trained):
    """lm-eval runs the shipped YAML task (a JSON dataset, offline) on the model itself: an accuracy in [0, 1] for
    each checkpoint, different for a model trained 300 steps and one trained 20."""
    scores = {}
    for name in ("trained", "brief"):
        result = _eval(trained, f"tasks-{name}", "--load", trained[name], "--tasks", "megadoc_toy_mc",
                       "--include-path", ".", "--micro-batch-size", "16", cwd=TASKS)
        scores[name] = result["benchmarks"]["megadoc_toy_mc"]
    for score in scores.values():
        assert 0.0 <= score["acc"] <= 1.0 and score["sample_len"] == 94 and score["acc_stderr"] > 0
    assert scores["trained"]["acc"] != scores["brief"]["acc"]
    assert np.isclose(scores["trained"]["acc"] * 94, round(scores["trained"]["acc"] * 94))  # a count of items


def test_lm_eval_runs_on_the_hugging_face_export(trained):
    """The path users take on clusters: `megadoc export` of each checkpoint, then lm-eval's own `hf` model on the
    exported folder (transformers, the exported SentencePiece tokenizer) on the same local task: an accuracy in
    [0, 1] that differs between the model trained 300 steps and the one trained 20."""
    scores = {}
    for name in ("trained", "brief"):
        folder = trained["root"] / f"hf-{name}"
        _megadoc("export", "--load", trained[name], "--output", str(folder))
        code = ("import json, sys, lm_eval; from lm_eval.tasks import TaskManager; "
                "r = lm_eval.simple_evaluate(model='hf', model_args=f'pretrained={sys.argv[1]},dtype=float32', "
                "tasks=['megadoc_toy_mc'], task_manager=TaskManager(include_path='.'), batch_size=16, "
                "device='cpu'); print(json.dumps(r['results']['megadoc_toy_mc']))")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=TASKS,
                                env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads(result.stdout.strip().splitlines()[-1])["acc,none"]
    assert all(0.0 <= acc <= 1.0 for acc in scores.values()) and scores["trained"] != scores["brief"], scores
