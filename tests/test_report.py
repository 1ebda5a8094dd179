"""The runs registry (upsert, typed parsing) and megadoc report (Markdown and PNGs from the registry)."""

import numpy as np
import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.evaluation.metrics import LossAccumulator, save_curve
from megadoc.training.registry import RunRecord, read_registry, record_run, update_run

D = 203_700_000
SIMPLE = {2: 3.462, 4: 3.446, 8: 3.429, 16: 3.414, 32: 3.410}  # PAPER.md §4c
STITCHED = {2: 3.456, 4: 3.436, 8: 3.417, 16: 3.395, 32: 3.384}


def _curve(path, start):
    acc = LossAccumulator(64)
    acc.add(start - 0.3 * np.log1p(np.arange(64)) / np.log(64), np.arange(64))
    save_curve(acc.curve(8, beyond=(32,)), path)
    return path.name


def _registry(tmp_path):
    registry = tmp_path / "runs.csv"
    record_run(registry, RunRecord("real16", "real", 0, D, 16, None, 3e-3, 1.6, iid_loss=3.5544,
                                   long_loss=3.80, loss_by_position=_curve(tmp_path / "real.json", 4.0)))
    for method, losses in (("simple", SIMPLE), ("stitched", STITCHED)):
        for G, loss in losses.items():
            record_run(registry, RunRecord(f"{method}{G}", method, G, D, 16, 0.75, 3e-3, 0.4, checkpoint=f"runs/{G}"))
            update_run(registry, f"{method}{G}", iid_loss=loss, long_loss=loss + 0.3)
        record_run(registry, RunRecord(f"{method}32-worse", method, 32, D, 8, 0.75, 3e-3, 0.4, iid_loss=3.6))
    update_run(registry, "stitched32", loss_by_position=_curve(tmp_path / "b32.json", 3.9))
    return registry


def test_registry_round_trips_and_updates_in_place(tmp_path):
    registry = _registry(tmp_path)
    runs = {run.run: run for run in read_registry(registry)}
    assert len(runs) == 13
    assert runs["stitched32"].iid_loss == 3.384 and runs["stitched32"].loss_by_position == "b32.json"
    assert runs["real16"].synthetic_fraction is None and runs["real16"].generations == 0
    assert runs["simple2"].checkpoint == "runs/2"
    with pytest.raises(MegadocError, match="no run named 'nope'"):
        update_run(registry, "nope", iid_loss=1.0)
    registry.write_text(registry.read_text().replace("stitched,2,203700000", "stitched,two,203700000"))
    with pytest.raises(MegadocError, match=r"runs.csv:\d+: column 'generations' is 'two', not an integer"):
        read_registry(registry)


def test_report_draws_every_figure(tmp_path, capsys):
    registry, out = _registry(tmp_path), tmp_path / "report"
    code = main(["report", "--registry", str(registry), "--output-dir", str(out), "--alpha", "0.235",
                 "--asymptote", "1.93"])
    assert code == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert "| stitched | 32 | stitched32 |" in text and "3.3840" in text  # the best of the two G=32 runs
    assert "| simple | 32 | simple32 | 1 | 16 | 0.75 | 0.003 | 0.4 | 3.4100 | 3.7100 |  | 1.49x |" in text
    assert "Runs: real16, stitched32." in text
    for name in ("loss_vs_G_iid.png", "loss_vs_G_long.png", "loss_by_position.png", "efficiency.png",
                 "loss_vs_real_tokens.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert not (out / "loss_vs_G_short.png").exists()


def test_report_without_a_law_says_why(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--registry", str(_registry(tmp_path)), "--output-dir", str(out)]) == 0
    assert "No data efficiency: real-only runs exist at 1 real-token budget(s)" in (out / "report.md").read_text()
