"""`megadoc demo` at a reduced size, end to end on the real stack: the Lee corpus from gensim, SmolLM2 on vLLM (CPU),
Megatron-Core training and evaluation on CPU, the report. Then a re-run skips every finished step, and a step whose
marker is gone is redone alone.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SMALL = ["--docs", "20", "split.iid_docs=4", "split.long_docs=2", "generate.rephrases=2", "generate.rationales=1",
         "generate.rephrase_max_tokens=32", "generate.rationale_max_tokens=24", "train.seq_length=64",
         "train.global_batch_size=4", "train.micro_batch_size=4"]
METHODS = ("real", "simple", "stitched", "stretched")


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
    runs = {row["method"]: row for row in csv.DictReader((work / "runs.csv").open())}
    assert set(runs) == set(METHODS)
    vocab = 49152  # SmolLM2's tokenizer
    for method, row in runs.items():
        assert 0 < float(row["iid_loss"]) < math.log(vocab) - 1, (method, row)  # trained: far below uniform
        assert float(row["long_loss"]) > 0 and row["loss_by_position"]
        curve = json.loads((work / row["loss_by_position"]).read_text())
        assert curve["seq_length"] == 64 and len(curve["loss"]) == 64 // curve["bucket_size"]
    assert (runs["stretched"]["generations"], runs["stitched"]["generations"], runs["real"]["generations"]) == \
        ("1", "2", "0")
    report = (work / "report" / "report.md").read_text()
    assert all(f"| {method} |" in report for method in METHODS)
    assert all((work / "report" / name).stat().st_size > 1000 for name in ("loss_vs_G_iid.png", "loss_by_position.png"))
    assert "megadoc submit" in stdout and (out / "pipeline.yaml").exists()


def test_validation_documents_reach_no_synthetic_stream(demo):
    out, _ = demo
    work = out / "work"
    held_out = set((work / "split" / "validation_ids.txt").read_text().split())
    assert len(held_out) == 6
    for method in ("simple", "stitched", "stretched"):
        streamed = [json.loads(line)["id"] for line in (work / "tokens" / f"{method}.jsonl").open()]
        assert streamed and not {doc_id.split("/")[0] for doc_id in streamed} & held_out  # "<source id>/<index>"


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
