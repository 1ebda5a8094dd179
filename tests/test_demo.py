"""`megadoc demo` at a reduced size, end to end on the real stack: the Lee corpus from gensim, SmolLM2 on vLLM (CPU),
Megatron-Core training and evaluation on CPU, real-only runs at four data budgets, the report with its data law and
every method's data efficiency. Then a re-run skips every finished step, and a step whose marker is gone is redone
alone. (One seed and fewer epochs than the demo itself, to stay within the test budget.)
"""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SMALL = ["--docs", "24", "split.iid_docs=4", "split.long_docs=4", "split.short_docs=2", "split.short_max_tokens=200",
         "generate.rephrases=2", "generate.rationales=1", "generate.rephrase_max_tokens=32",
         "generate.rationale_max_tokens=24", "train.seq_length=64", "train.global_batch_size=4",
         "train.micro_batch_size=4", "train.real_only_epochs=4", "train.real_epochs=1",
         "data_budgets.budgets=[0.125, 0.25]", "data_budgets.methods=0.5", "data_budgets.seeds=[1234]"]
METHODS = ("real", "simple", "stitched", "stretched")
BUDGETS = 4  # the full training split and three nested subsets, the methods' (0.5) among them


def _demo(out: Path) -> str:
    result = subprocess.run([str(BIN / "megadoc"), "demo", "--output-dir", str(out), *SMALL], capture_output=True,
                            text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, _demo(out)


def test_demo_trains_every_method_and_reports(demo):
    out, stdout = demo
    work = out / "work"
    rows = list(csv.DictReader((work / "runs.csv").open()))
    (budget,) = {row["real_tokens"] for row in rows if row["method"] != "real"}  # the methods' real tokens
    runs = {row["method"]: row for row in rows if row["real_tokens"] == budget}
    assert set(runs) == set(METHODS) and len(rows) == BUDGETS + len(METHODS) - 1
    real_budgets = sorted(int(row["real_tokens"]) for row in rows if row["method"] == "real")
    assert len(set(real_budgets)) == BUDGETS and real_budgets[0] < int(budget) < real_budgets[-1]
    vocab = 49152  # SmolLM2's tokenizer
    for method, row in runs.items():
        assert 0 < float(row["iid_loss"]) < math.log(vocab) - 1, (method, row)  # trained: far below uniform
        assert float(row["long_loss"]) > 0 and float(row["short_loss"]) > 0 and row["loss_by_position"]
        curve = json.loads((work / row["loss_by_position"]).read_text())
        assert curve["seq_length"] == 64 and len(curve["loss"]) == 64 // curve["bucket_size"]
        assert curve["windows"] == 4 and all(se > 0 for se in curve["stderr"])  # the band over documents
    assert (runs["stretched"]["generations"], runs["stitched"]["generations"], runs["real"]["generations"]) == \
        ("1", "2", "0")
    report = (work / "report" / "report.md").read_text()
    table = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines() if line.startswith("| ")}
    for method in METHODS:  # the data-efficiency column, filled for every method
        assert re.search(r"\| (\d+\.\d+x( \[[^]]+\])?|beyond the law[^|]*) \|$", table[method]), table[method]
    assert re.search(r"fitted to 4 real-token budgets, R\^2 = -?\d\.\d{4}", stdout)  # printed by the demo
    assert all((work / "report" / name).stat().st_size > 1000
               for name in ("loss_vs_G_iid.png", "loss_by_position.png", "loss_vs_real_tokens.png"))
    assert "megadoc submit" in stdout and (out / "pipeline.yaml").exists()


def test_validation_documents_reach_no_synthetic_stream(demo):
    out, _ = demo
    work = out / "work"
    held_out = set((work / "split" / "validation_ids.txt").read_text().split())
    assert len(held_out) == 10
    methods_budget = {json.loads(line)["id"] for line in (work / "split" / "budgets" / "0.5.jsonl").open()}
    for method in ("simple", "stitched", "stretched"):
        streamed = [json.loads(line)["id"] for line in (work / "tokens" / f"{method}.jsonl").open()]
        sources = {doc_id.split("/")[0] for doc_id in streamed}  # "<source id>/<index>"
        assert streamed and not sources & held_out and sources <= methods_budget


def test_rerun_skips_finished_steps_and_redoes_a_missing_one(demo):
    out, _ = demo
    work = out / "work"
    before = (work / "runs.csv").read_text()
    stdout = _demo(out)
    assert "[report] done earlier, skipped" in stdout and "train-real] megadoc train" not in stdout
    (work / ".done" / "eval-stitched").unlink()
    stdout = _demo(out)
    assert "[eval-stitched] megadoc eval" in stdout and "[train-stitched] done earlier, skipped" in stdout
    assert (work / "runs.csv").read_text() == before  # the same checkpoint evaluates to the same numbers
