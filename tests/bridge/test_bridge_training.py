"""Training, evaluation and export through Megatron-Bridge 0.6.2 (run in .venv312 by tests/test_bridge.py).

`megadoc pretrain` (the product's launcher: Bridge's own `pretrain` with the megadoc recipe and DatasetProvider) trains
the tiny recipe at TP=2 over 2 gloo ranks on a real tokenized blend (cpu_bridge makes Bridge run on the CPU; the
command is the product's): it consumes exactly the planned samples per stream, as megadoc train's Megatron-Core
loop does on the same plan, and both record the same registry row. `megadoc eval` of its checkpoint gives what
Bridge's own model loader's forward pass gives; `megadoc export` writes the tensors AutoBridge's export writes, and
`transformers` computes the Megatron model's logits from them. A `backend: bridge` pipeline's dry-run scripts launch
that launcher with the arguments that build the megadoc recipe of the plan.
"""

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cpu_bridge import CPU_OVERRIDES

BIN = Path(sys.executable).parent
SITE = Path(__file__).resolve().parent / "cpu_site"
STREAMS = [32, 32]
"""The plan: E=1 over 4 base steps of 8 sequences (32 real samples), r=0.5 (32 synthetic): 8 steps."""
PLAN = {"real-epochs": "1", "synthetic-fraction": "0.5", "base-steps": "4", "global-batch-size": "8",
        "micro-batch-size": "2", "lr": "0.01"}
EXACT = 1e-5
"""fp32 on both sides: the same arithmetic up to summation order."""


def _run(command: list[str], record: Path | None = None, timeout: int = 420) -> subprocess.CompletedProcess:
    """A command in a fresh process, without this process's rendezvous or attention-backend variables (models
    built here leave NVTE_* behind; Megatron-Core checks the next model's backend against them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT") and not k.startswith("NVTE_")}
    env.update(PYTHONPATH=str(SITE), OMP_NUM_THREADS="1", **({"MEGADOC_TEST_RECORD": str(record)} if record else {}))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def _row(registry: Path) -> dict:
    (row,) = csv.DictReader(registry.open())
    return row


@pytest.fixture(scope="module")
def bridge_run(blend_data, llama3_hf, tmp_path_factory) -> Path:
    """`megadoc pretrain` of the tiny recipe, TP=2 over 2 ranks, validation every step, checkpoints at 4 and 8."""
    out = tmp_path_factory.mktemp("bridge")
    arguments = {"tokenizer_model": llama3_hf, "real_path": blend_data["real"],
                 "synthetic_paths": json.dumps([blend_data["syn"]]), "valid_paths": json.dumps([blend_data["valid"]]),
                 **{key.replace("-", "_"): value for key, value in PLAN.items()}, "save_interval": 4,
                 "eval_iters": 1, "output_dir": out, "tensor_model_parallel_size": 2}
    _run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "megadoc", "pretrain", "--registry",
          str(out / "runs.csv"), "--method", "stitched", "--generations", "2", "tiny",
          *(f"{key}={value}" for key, value in arguments.items()), *CPU_OVERRIDES], record=out / "record")
    return out


def test_bridge_pretrain_trains_the_plan(bridge_run):
    ckpt = bridge_run / "checkpoints"
    built = json.loads((bridge_run / "record" / "built-rank0.json").read_text())
    assert built["train_samples"] == built["len"] == sum(STREAMS) and built["stream_counts"] == STREAMS
    assert built["tokenizer_vocab_size"] == 128_256
    assert json.loads((bridge_run / "record" / "fetched-rank0.json").read_text()) == STREAMS  # consumed, exactly

    steps = _log(ckpt)
    assert [(s["iteration"], s["consumed_samples"]) for s in steps] == [(i, 8 * i) for i in range(1, 9)]
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5, losses
    lrs = [s["lr"] for s in steps]
    assert max(lrs) == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine to zero
    assert all(math.isfinite(s["grad_norm"]) and s["step_time_s"] > 0 for s in steps)

    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "8"
    assert (ckpt / "iter_0000004" / "run_config.yaml").exists() and (ckpt / "iter_0000008" / "run_config.yaml").exists()
    assert list((bridge_run / "tb_logs").glob("events.out.tfevents.*"))
    record = json.loads((ckpt / "megadoc_recipe.json").read_text())
    assert (record["backend"], record["train_iters"], record["recipe"]["model"]["name"]) == ("bridge", 8, "tiny")
    assert record["recipe"]["parallel"]["tensor_model_parallel_size"] == 2 and record["recipe"]["vocab_size"] == 128_256
    assert (record["plan"]["real"]["sequences"], record["plan"]["synthetic"][0]["sequences"]) == tuple(STREAMS)
    row = _row(bridge_run / "runs.csv")
    assert row["run"] == record["name"] == "tiny-2.05Kx1-real+stitched2^0.5-cos-lr0.0100-wd0.80-bs8"
    assert row["checkpoint"] == str(ckpt)


def test_core_loop_on_the_same_plan_consumes_the_same_samples(bridge_run, blend_data, llama3_hf, tmp_path):
    """The Megatron-Core loop (megadoc train) on the same model and plan: the same per-stream samples fetched, the
    loss falls, and the same registry row (name, plan, hyperparameters) as the Bridge run."""
    flags = [item for key, value in PLAN.items() for item in (f"--{key}", value)]
    _run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "1", "-m", "megadoc", "train", "--recipe", "tiny",
          "--tokenizer-model", str(llama3_hf), "--real-path", blend_data["real"], "--synthetic-path",
          blend_data["syn"], *flags, "--save", str(tmp_path / "core"), "--registry", str(tmp_path / "runs.csv"),
          "--method", "stitched", "--generations", "2"], record=tmp_path / "record")
    assert json.loads((tmp_path / "record" / "fetched-rank0.json").read_text()) == STREAMS
    core, bridge = _log(tmp_path / "core"), _log(bridge_run / "checkpoints")
    assert [s["consumed_samples"] for s in core] == [s["consumed_samples"] for s in bridge]
    assert core[-1]["loss"] < core[0]["loss"] - 0.5
    core_row, bridge_row = _row(tmp_path / "runs.csv"), _row(bridge_run / "runs.csv")
    assert {**core_row, "checkpoint": ""} == {**bridge_row, "checkpoint": ""}


@pytest.fixture(scope="module")
def world():
    from megadoc.recipes.models import ParallelRecipe
    from megadoc.training.runtime import start

    start(ParallelRecipe(), 1)


def _windows(prefix: str, vocab_size: int) -> torch.Tensor:
    """Every packed validation window, as megadoc eval packs them (tokens + the next one)."""
    from megadoc.evaluation.evaluate import packed_windows

    windows = packed_windows(prefix, 64, vocab_size)
    return torch.stack([torch.cat([w["tokens"][:1], w["labels"]]) for w in (windows[i] for i in range(len(windows)))])


@pytest.fixture
def fresh_attention(monkeypatch):
    """Megatron-Core records a model's attention backend in NVTE_* variables and asserts that the next model's
    agrees (megadoc's model says auto, the recipe's local): each process of the product builds one kind, this test
    process builds both, so it forgets the variables before each build (and restores them after the test)."""

    def forget():
        for name in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
            monkeypatch.delenv(name, raising=False)

    forget()
    return forget


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None).float()


def test_megadoc_eval_of_a_bridge_checkpoint_is_bridges_own_model(bridge_run, blend_data, world, fresh_attention):
    """megadoc eval (`evaluate`, world 1: the TP=2 checkpoint resharded) gives the i.i.d. loss that Bridge's own loader's model
    computes on the same windows, and megadoc's load_model holds the same logits."""
    from megatron.bridge.training.model_load_save import load_megatron_model

    from megadoc.evaluation.evaluate import EvalConfig, evaluate
    from megadoc.training.checkpoints import load_model

    ckpt = bridge_run / "checkpoints"
    evaluate(EvalConfig(load=(str(ckpt),), valid_path=blend_data["valid"], long_valid_path=blend_data["valid"],
                        output_dir=str(bridge_run / "eval"), registry=str(bridge_run / "runs.csv")))
    fresh_attention()
    results = json.loads((bridge_run / "eval" / "eval.json").read_text())
    assert results["iteration"] == 8 and results["recipe"] == "tiny" and results["long_windows"] > 0
    assert float(_row(bridge_run / "runs.csv")["iid_loss"]) == pytest.approx(results["iid_loss"], abs=1e-12)

    megadoc_model = load_model(str(ckpt)).model
    fresh_attention()
    (bridge_model,) = load_megatron_model(str(ckpt / "iter_0000008"), use_cpu_init=True)
    bridge_model.eval()
    windows = _windows(blend_data["valid"], 128_256)
    assert len(windows) == results["iid_windows"]
    logits = _logits(bridge_model, windows[:, :-1])
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert losses.item() == pytest.approx(results["iid_loss"], abs=EXACT)
    megadoc_logits = _logits(megadoc_model, windows[:4, :-1])
    assert (megadoc_logits - logits[:4]).abs().max().item() < EXACT


def test_export_is_autobridges_and_transformers_reproduces_the_logits(bridge_run, tmp_path, world, fresh_attention):
    """`megadoc export` of the Bridge checkpoint: the tensors Megatron-Bridge's AutoBridge exports from the same
    checkpoint, bit for bit, and LlamaForCausalLM's logits are the Megatron model's (fp32, max |diff| < 1e-5)."""
    from megatron.bridge import AutoBridge
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from megadoc.training.checkpoints import load_model
    from megadoc.training.export import export

    ckpt, hf = bridge_run / "checkpoints", export(str(bridge_run / "checkpoints"), str(tmp_path / "hf"))
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"]
    ours = load_file(hf / "model.safetensors")
    fresh_attention()
    megatron_model = load_model(str(ckpt)).model
    fresh_attention()
    bridge = AutoBridge.from_hf_config(AutoConfig.from_pretrained(hf))
    theirs = dict(bridge.export_hf_weights(bridge.load_megatron_model(str(ckpt), wrap_with_ddp=False),
                                           show_progress=False))
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[name], theirs[name].to(ours[name].dtype)) for name in ours)

    tokens = torch.randint(0, 128_256, (2, 64), generator=torch.Generator().manual_seed(0))
    megatron = _logits(megatron_model, tokens)
    with torch.no_grad():
        transformers_logits = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)(tokens).logits
    assert (transformers_logits - megatron).abs().max().item() < EXACT


def test_bridge_pipeline_dry_run_launches_the_megadoc_recipe(tmp_path, llama3_hf, capsys):
    """`megadoc submit --dry-run` of a backend: bridge pipeline: each train script runs `megadoc pretrain` under
    torchrun, and its arguments build the megadoc recipe of the plan (data, E, r, train_iters, checkpoints)."""
    import yaml

    from megadoc.cli import build_parser, main
    from megadoc.training.bridge import build_config
    from megadoc_data.bridge import MegadocDatasetProvider

    pipeline = {"name": "bridgetest", "work_dir": "work", "corpus": ["corpus.jsonl"], "methods": ["stitched"],
                "tokenizer": {"model": str(llama3_hf)}, "generate": {"rephrases": 2, "rationales": None},
                "train": {"recipe": "tiny", "global_batch_size": 8, "base_steps": 2, "real_epochs": 1,
                          "synthetic_fraction": 0.5, "backend": "bridge", "tensor_model_parallel_size": 2,
                          "nproc_per_node": 2}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    assert main(["submit", str(tmp_path / "pipeline.yaml"), "--dry-run"]) == 0
    assert "[train-stitched] sbatch --parsable" in capsys.readouterr().out
    work = tmp_path / "work"
    script = next((work / "slurm" / "scripts").glob("*-train-stitched.sbatch")).read_text().replace(" \\\n    ", " ")
    (launch,) = [line for line in script.splitlines() if "-m megadoc pretrain" in line]
    words = shlex.split(launch)
    assert words[words.index("-m") + 1] == "torch.distributed.run" and "--nproc-per-node=2" in words
    args = build_parser("pretrain").parse_args(words[words.index("pretrain") + 1:])
    cfg = build_config(args.recipe, args.overrides)
    assert isinstance(cfg.dataset, MegadocDatasetProvider)
    blend = cfg.dataset.blend
    assert (blend.real_prefix, blend.synthetic_prefixes, blend.valid_prefixes) == \
        (str(work / "tokens" / "train"), [str(work / "tokens" / "stitched")], [str(work / "tokens" / "valid_iid")])
    assert (blend.real_epochs, blend.synthetic_fraction, blend.base_steps, cfg.train.train_iters) == (1, 0.5, 2, 4)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.tensor_model_parallel_size) == (64, 2, 2)
    assert cfg.checkpoint.save == cfg.checkpoint.load == str(work / "runs" / "stitched" / "checkpoints")
    assert cfg.tokenizer.tokenizer_model == str(llama3_hf) and args.registry == str(work / "runs.csv")
