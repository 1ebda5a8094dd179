"""Power-law fits, inversion, data efficiency against PAPER.md §6's table, and the convex-tuning certificate."""

import csv

import numpy as np
import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.analysis.certificate import certify
from megadoc.analysis.laws import PowerLaw, anchored_law, data_efficiency, fit_power_law
from megadoc.training.registry import RunRecord, record_run

D_REAL = 203.7e6
L_BASE = 3.5544  # the paper's 300M real-only loss


def test_fit_recovers_a_known_law():
    law = PowerLaw(A=250.0, alpha=0.235, C=1.93)
    tokens = np.array([0.2e9, 0.4e9, 0.8e9, 1.6e9, 3.2e9])
    fit = fit_power_law(tokens, law(tokens))
    assert fit.alpha == pytest.approx(0.235, rel=1e-3)
    assert fit.C == pytest.approx(1.93, rel=1e-3)
    assert fit.A == pytest.approx(250.0, rel=1e-2)


def test_fit_recovers_the_ensemble_asymptote_from_noisy_points():
    law = PowerLaw(A=0.07, alpha=0.9, C=3.18)  # Stitched (32) ensembles, N in billions (PAPER.md §4c)
    params = 0.3 * np.arange(1, 6)
    noise = np.array([0.001, -0.001, 0.0005, -0.0005, 0.0])
    assert fit_power_law(params, law(params) + noise).C == pytest.approx(3.18, abs=0.02)


def test_fit_refuses_too_few_points_and_a_law_that_does_not_fit():
    with pytest.raises(MegadocError, match=">= 4 distinct"):
        fit_power_law([1, 2, 4], [3.0, 2.5, 2.2])
    with pytest.raises(MegadocError, match="do not follow"):
        fit_power_law([1, 2, 4, 8, 16], [3.0, 3.5, 2.9, 3.6, 3.0])  # loss that rises and falls


def test_inversion_round_trips_and_refuses_the_asymptote():
    law = PowerLaw(A=250.0, alpha=0.235, C=1.93)
    for tokens in (1e8, 2e8, 5e9):
        assert law.invert(float(law(tokens))) == pytest.approx(tokens, rel=1e-9)
    with pytest.raises(MegadocError, match="asymptote"):
        law.invert(1.93)


@pytest.mark.parametrize("loss, expected", [(3.46, 1.29), (3.43, 1.40), (3.41, 1.49), (3.38, 1.62), (3.345, 1.80)])
def test_data_efficiency_matches_the_papers_conversion_table(loss, expected):
    law = anchored_law(alpha=0.235, asymptote=1.93, tokens=D_REAL, loss=L_BASE)
    assert data_efficiency(law, loss, D_REAL) == pytest.approx(expected, abs=0.006)
    assert data_efficiency(law, L_BASE, D_REAL) == pytest.approx(1.0)


def _run(name, E, r, lr, wd, loss, method="simple", G=32):
    return RunRecord(run=name, method=method, generations=G, real_tokens=int(D_REAL), real_epochs=E, synthetic_fraction=r,
                     lr=lr, weight_decay=wd, iid_loss=loss)


def test_certificate_on_an_interior_optimum():
    best = _run("best", 16, 0.75, 3e-3, 0.4, 3.410)
    neighbours = [_run("e8", 8, 0.75, 3e-3, 0.4, 3.422), _run("e32", 32, 0.75, 3e-3, 0.4, 3.423),
                  _run("r5", 16, 0.5, 3e-3, 0.4, 3.43), _run("r9", 16, 0.9, 3e-3, 0.4, 3.44),
                  _run("lr1", 16, 0.75, 1e-3, 0.4, 3.42), _run("lr10", 16, 0.75, 1e-2, 0.4, 3.45),
                  _run("wd1", 16, 0.75, 3e-3, 0.1, 3.43)]
    pending = _run("wd8", 16, 0.75, 3e-3, 0.8, None)
    partial = certify([best, *neighbours], best, "iid_loss")
    assert not partial.certified and partial.to_run == [{"real_epochs": 16, "synthetic_fraction": 0.75, "lr": 3e-3,
                                                      "weight_decay": 0.8}]
    waiting = certify([best, *neighbours, pending], best, "iid_loss")
    assert not waiting.certified and waiting.to_run == []
    done = certify([best, *neighbours, _run("wd8", 16, 0.75, 3e-3, 0.8, 3.415)], best, "iid_loss")
    assert done.certified and len(done.neighbours) == 8 and done.edges == []


def test_certificate_at_the_grid_edge_and_off_grid():
    best = _run("edge", 32, 0.9, 1e-3, 0.4, 3.384)
    certificate = certify([best], best, "iid_loss")
    assert sorted(certificate.edges) == ["lr", "real_epochs", "synthetic_fraction"]
    assert len(certificate.to_run) == 5  # E 16, r 0.75, lr 3e-3, wd 0.1 and 0.8
    real = RunRecord(run="real", method="real", generations=0, real_tokens=int(D_REAL), real_epochs=16, synthetic_fraction=None, lr=3e-3, weight_decay=1.6,
                     iid_loss=3.5544)
    assert {tuple(n) for n in certify([real], real, "iid_loss").to_run} == {("real_epochs", "lr", "weight_decay")}
    with pytest.raises(MegadocError, match="real_epochs = 3"):
        certify([best], _run("odd", 3, 0.9, 1e-3, 0.4, 3.4), "iid_loss")


def test_efficiency_command_writes_table_plot_and_to_run(tmp_path, capsys):
    registry = tmp_path / "runs.csv"
    record_run(registry, RunRecord(run="real", method="real", generations=0, real_tokens=int(D_REAL), real_epochs=16, synthetic_fraction=None, lr=3e-3,
                                   weight_decay=1.6, iid_loss=L_BASE))
    for G, loss in ((2, 3.462), (32, 3.410)):
        record_run(registry, _run(f"s{G}", 16, 0.75, 3e-3, 0.4, loss, G=G))
    record_run(registry, RunRecord(run="b32", method="stitched", generations=32, real_tokens=int(D_REAL), real_epochs=32, synthetic_fraction=0.9, lr=1e-3,
                                   weight_decay=0.4, recipe="300m", iid_loss=3.345))
    out = tmp_path / "eff"
    code = main(["efficiency", "--registry", str(registry), "--output-dir", str(out),
                 "--alpha", "0.235", "--asymptote", "1.93"])
    assert code == 0, capsys.readouterr().err
    rows = {(row["method"], row["generations"]): row for row in csv.DictReader((out / "efficiency.csv").open())}
    assert float(rows["simple", "32"]["data_efficiency"]) == pytest.approx(1.49, abs=0.006)
    assert float(rows["stitched", "32"]["data_efficiency"]) == pytest.approx(1.80, abs=0.006)
    assert rows["stitched", "32"]["certified"] == "False"
    assert (out / "efficiency.png").stat().st_size > 0 and "locally optimal" in (out / "efficiency.md").read_text()
    to_run = list(csv.DictReader((out / "to_run.csv").open()))
    assert {"stitched", "simple", "real"} == {row["method"] for row in to_run}
    assert "300m4k-203Mx16-real+stitched32^0.9-cos-lr0.0010-wd0.40-bs64" in {row["run"] for row in to_run}
    assert main(["efficiency", "--registry", str(registry), "--output-dir", str(out)]) == 1
    assert "needs 4, or pass --alpha and --asymptote" in capsys.readouterr().err


def test_fitted_data_law_and_parameter_asymptotes_from_the_registry(tmp_path, capsys):
    registry, data_law = tmp_path / "runs.csv", PowerLaw(A=145.6, alpha=0.235, C=1.93)
    params_law = PowerLaw(A=0.05, alpha=1.02, C=3.43)  # Appendix A's regularized fit, N in billions
    for tokens in (D_REAL, 2 * D_REAL, 4 * D_REAL, 8 * D_REAL):
        record_run(registry, RunRecord(run=f"real{tokens:.0f}", method="real", generations=0, real_tokens=int(tokens), real_epochs=16,
                                       synthetic_fraction=None, lr=3e-3, weight_decay=1.6, params=300_000_000,
                                       iid_loss=float(data_law(int(tokens)))))
    for size in (150e6, 300e6, 600e6, 1.5e9):
        record_run(registry, RunRecord(run=f"b32-{size:.0f}", method="stitched", generations=32, real_tokens=int(D_REAL), real_epochs=32,
                                       synthetic_fraction=0.9, lr=1e-3, weight_decay=0.4, params=int(size),
                                       iid_loss=float(params_law(size / 1e9))))
    record_run(registry, RunRecord(run="s32", method="simple", generations=32, real_tokens=int(D_REAL), real_epochs=16, synthetic_fraction=0.75, lr=3e-3,
                                   weight_decay=0.4, params=300_000_000, iid_loss=float(data_law(2 * D_REAL))))
    out = tmp_path / "eff"
    argv = ["efficiency", "--registry", str(registry), "--output-dir", str(out)]
    assert main(argv) == 1 and "several model sizes" in capsys.readouterr().err
    assert main(argv + ["--params", "300000000"]) == 0, capsys.readouterr().err
    rows = {(row["method"], row["generations"], row["real_tokens"]): row
            for row in csv.DictReader((out / "efficiency.csv").open())}
    assert float(rows["simple", "32", str(int(D_REAL))]["data_efficiency"]) == pytest.approx(2.0, rel=1e-3)
    text = (out / "efficiency.md").read_text()
    assert "Real-only law L(D) = 145.6 / D^0.2350 + 1.9300, fitted to 4 real-token budgets, R^2 = 1.0000" in text
    assert "| stitched | 32 | 203700000 | 4 | 4 | 0.05 / N^1.02 + **3.4300** |" in text


def _seeded(registry, law, noise, seeds=(0, 1, 2)):
    """Real-only runs at four budgets and a simple run, each repeated over `seeds` with loss noise per seed."""
    for tokens in (D_REAL, 2 * D_REAL, 4 * D_REAL, 8 * D_REAL):
        for seed in seeds:
            record_run(registry, RunRecord(run=f"real{tokens:.0f}-s{seed}", method="real", generations=0,
                                           real_tokens=int(tokens), real_epochs=16, synthetic_fraction=None, lr=3e-3,
                                           weight_decay=1.6, seed=seed,
                                           iid_loss=float(law(int(tokens))) + noise * (seed - 1)))
    for seed in seeds:
        record_run(registry, _run(f"s32-s{seed}", 16, 0.75, 3e-3, 0.4, float(law(2 * D_REAL)) + noise * (1 - seed)))


def test_seeds_average_and_the_bootstrap_interval_brackets_the_efficiency(tmp_path, capsys):
    """Repeats of one configuration are averaged (the best configuration is the best mean), and the data efficiency
    gets a bootstrap interval over seeds that contains it; without repeats there is no interval."""
    from megadoc.analysis.efficiency import EfficiencyConfig, analyse

    law = PowerLaw(A=145.6, alpha=0.235, C=1.93)
    registry = tmp_path / "runs.csv"
    _seeded(registry, law, noise=0.01)
    record_run(registry, _run("s32-lucky", 8, 0.75, 3e-3, 0.4, float(law(3 * D_REAL))))  # one lucky seed of E=8
    record_run(registry, _run("s32-unlucky", 8, 0.75, 3e-3, 0.4, float(law(D_REAL))))
    analysis = analyse(EfficiencyConfig(str(registry), str(tmp_path / "eff")))
    row = next(row for row in analysis.rows if row["method"] == "simple")
    assert row["run"] == "s32-s0" and row["seeds"] == 3  # E=16's mean beats E=8's (3.xx vs the lucky seed alone)
    assert row["data_efficiency"] == pytest.approx(2.0, rel=1e-3)  # the seed noise cancels in the mean
    assert row["de_low"] < row["data_efficiency"] < row["de_high"] and row["de_high"] - row["de_low"] > 0.05
    assert analysis.resamples > 900 and analysis.r2 > 0.99
    assert [p["seeds"] for p in analysis.real_points] == [3, 3, 3, 3]

    single = tmp_path / "single.csv"
    _seeded(single, law, noise=0.0, seeds=(0,))
    analysis = analyse(EfficiencyConfig(str(single), str(tmp_path / "eff1")))
    assert analysis.resamples == 0 and all(row["de_low"] is None for row in analysis.rows)
    assert main(["efficiency", "--registry", str(registry), "--output-dir", str(tmp_path / "eff")]) == 0
    out = capsys.readouterr().out
    assert "R^2 = " in out and "95% bootstrap over seeds" in out and "[" in out


def test_ensemble_asymptote_from_loss_vs_k(tmp_path, capsys):
    """Ensemble rows (members = K) of one configuration follow A / K^alpha + C: efficiency reports C."""
    law = PowerLaw(A=0.06, alpha=0.99, C=3.20)  # PAPER.md §4c, latent thoughts (16), per member
    registry = tmp_path / "runs.csv"
    for seed in range(3):
        record_run(registry, _run(f"z16-s{seed}", 16, 0.75, 3e-3, 0.4, float(law(1)), method="stretched", G=16))
    for k in (2, 3, 4, 5):
        record_run(registry, RunRecord(**{**_run("z16", 16, 0.75, 3e-3, 0.4, float(law(k)), method="stretched",
                                                 G=16).__dict__, "run": f"z16-ens{k}", "members": k}))
    record_run(registry, RunRecord(run="real", method="real", generations=0, real_tokens=int(D_REAL), real_epochs=16,
                                   synthetic_fraction=None, lr=3e-3, weight_decay=1.6, iid_loss=L_BASE))
    out = tmp_path / "eff"
    assert main(["efficiency", "--registry", str(registry), "--output-dir", str(out), "--alpha", "0.235",
                 "--asymptote", "1.93"]) == 0, capsys.readouterr().err
    assert "ensembles K -> infinity: loss 3.2000" in capsys.readouterr().out
    assert "0.06 / K^0.99 + **3.2000**" in (out / "efficiency.md").read_text()
    rows = list(csv.DictReader((out / "efficiency.csv").open()))
    assert {row["run"] for row in rows} == {"z16-s0", "real"}  # ensembles are not runs of the table
