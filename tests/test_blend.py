"""megadoc blend: the paper's step arithmetic, exact counts, and every bad plan's one-line error."""

import json

import numpy
import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc_data.config import MegadocBlendConfig
from megadoc_data.plan import apportion, make_plan, train_iters


def write_dataset(prefix, lengths, dtype=numpy.uint16, seed=0):
    """A small .bin/.idx of random tokens (no tokenizer needed for the arithmetic)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for length in lengths:
        builder.add_document(numpy.asarray(rng.integers(1, 1000, length), dtype=dtype), [length])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture
def prefixes(tmp_path):
    real = write_dataset(tmp_path / "real", [300] * 40, seed=1)  # 12,000 tokens
    syn = write_dataset(tmp_path / "syn", [500] * 60, seed=2)
    syn2 = write_dataset(tmp_path / "syn2", [200] * 50, seed=3)
    return real, syn, syn2


@pytest.mark.parametrize("epochs,fraction,steps", [(32, 0.9, 248_640), (16, 0.75, 49_728), (16, 0.0, 12_432),
                                                   (8, 0.5, 12_432), (4, 0.75, 12_432)])
def test_paper_step_counts(epochs, fraction, steps):
    assert train_iters(777, epochs, fraction) == steps


def test_paper_plan_e32_r09_exact():
    config = MegadocBlendConfig(real_prefix="dcr", synthetic_prefixes=["b32"], real_epochs=32,
                                synthetic_fraction=0.9, base_steps=777)
    plan = make_plan(config, synthetic_pass_sequences=[3_713_048_352 // 4096])
    assert plan.train_iters == 248_640
    assert plan.real.sequences == 32 * 777 * 64  # exactly E passes of the 777-batch real stream
    assert plan.synthetic_sequences == 9 * plan.real.sequences
    assert plan.real.epochs == 32
    assert plan.total_tokens == 248_640 * 64 * 4096  # 65.2B, as the paper
    assert round(plan.synthetic_sequences * 4096 / 1e9, 1) == 58.7
    assert round(plan.synthetic[0].epochs, 1) == 15.8


def test_e16_r075_is_64x_base():
    config = MegadocBlendConfig(real_prefix="dcr", synthetic_prefixes=["s16"], real_epochs=16,
                                synthetic_fraction=0.75, base_steps=777)
    plan = make_plan(config)
    assert plan.train_iters == 64 * 777 == 49_728
    assert plan.real.sequences == 16 * 777 * 64


@pytest.mark.parametrize("epochs,fraction", [(3, 0.3), (5, 0.33), (7.5, 0.61)])
def test_synthetic_fraction_to_one_sequence(epochs, fraction):
    config = MegadocBlendConfig(real_prefix="r", synthetic_prefixes=["a", "b", "c"],
                                synthetic_weights=[0.5, 0.3, 0.2], real_epochs=epochs,
                                synthetic_fraction=fraction, base_steps=101, global_batch_size=7)
    plan = make_plan(config)
    assert plan.real.sequences + plan.synthetic_sequences == plan.total_sequences == plan.train_iters * 7
    assert abs(plan.synthetic_sequences - fraction * plan.total_sequences) <= 0.5
    assert [s.sequences for s in plan.synthetic] == apportion(plan.synthetic_sequences, [0.5, 0.3, 0.2])


def test_apportion_sums_exactly():
    assert apportion(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    assert sum(apportion(1_000_003, [0.7, 0.2, 0.1])) == 1_000_003


def test_blend_cli_table_json_and_megatron_flags(prefixes, tmp_path, capsys):
    real, syn, syn2 = prefixes
    out = tmp_path / "plan.json"
    argv = ["blend", "--real-path", real, "--synthetic-path", "0.75", syn, "0.25", syn2, "--real-epochs", "4",
            "--synthetic-fraction", "0.75", "--seq-length", "64", "--global-batch-size", "4"]
    assert main(argv + ["--output", str(out)]) == 0
    table = capsys.readouterr().out
    plan = json.loads(out.read_text())
    # real: 11,999 // 64 = 187 sequences per pass -> base 46 batches of 4
    assert plan["base_steps"] == 46 and plan["train_iters"] == 46 * 4 * 4
    assert plan["real"]["sequences"] == 4 * 46 * 4 and plan["real"]["epochs"] == 4
    assert plan["synthetic_sequences"] == 3 * plan["real"]["sequences"]
    assert "train_iters 736" in table and "epochs" in table
    assert main(argv + ["--emit", "megatron-lm"]) == 0
    flags = capsys.readouterr().out.split()
    assert flags[:7] == ["--train-data-path", "0.25", real, "0.5625", syn, "0.1875", syn2]
    assert flags[flags.index("--train-iters") + 1] == "736"


def bad_config(**overrides):
    fields = dict(real_prefix="r", synthetic_prefixes=["s"], real_epochs=2, synthetic_fraction=0.5, base_steps=10)
    return MegadocBlendConfig(**{**fields, **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"synthetic_fraction": 1.0}, "synthetic_fraction: 1.0 is outside [0, 1)"),
    ({"synthetic_fraction": -0.1}, "outside [0, 1)"),
    ({"real_epochs": 0}, "real_epochs: 0 must be > 0"),
    ({"real_epochs": -2}, "real_epochs"),
    ({"synthetic_prefixes": ["a", "b"], "synthetic_weights": [0.5, 0.4]}, "sum to 0.9, not 1"),
    ({"synthetic_prefixes": ["a", "b"], "synthetic_weights": [1.0]}, "1 weights for 2 synthetic prefixes"),
    ({"synthetic_prefixes": []}, "needs at least one synthetic prefix"),
    ({"seq_length": 0}, "seq_length"),
])
def test_bad_config(overrides, message):
    with pytest.raises(MegadocError, match=None) as error:
        bad_config(**overrides)
    assert message in str(error.value)


def cli_error(argv, capsys):
    assert main(["blend"] + argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_plans_on_data(prefixes, tmp_path, capsys):
    real, syn, _ = prefixes
    base = ["--real-path", real, "--synthetic-path", syn, "--synthetic-fraction", "0.5", "--seq-length", "64",
            "--global-batch-size", "4"]
    assert "missing.idx: no such file" in cli_error(base[:3] + [str(tmp_path / "missing")] + base[4:], capsys)
    wide = write_dataset(tmp_path / "wide", [300] * 10, dtype=numpy.int32)
    assert "different vocabularies" in cli_error(base[:3] + [wide] + base[4:], capsys)
    assert "not one sequence of --seq-length 100000" in cli_error(base[:-3] + ["100000"] + base[-2:], capsys)
    assert "no document reaches --seq-length 600" in cli_error(
        base[:-3] + ["600"] + base[-2:] + ["--long-valid-path", syn], capsys)
    assert "exceed one pass" in cli_error(base + ["--base-steps", "1000"], capsys)
    assert "outside [0, 1)" in cli_error(base[:5] + ["1.5"] + base[6:], capsys)
    assert "not 1" in cli_error(["--real-path", real, "--synthetic-path", "0.6", syn, "0.6", syn, "--synthetic-fraction", "0.5"], capsys)


def test_real_only_plan():
    plan = make_plan(MegadocBlendConfig(real_prefix="dcr", real_epochs=16, base_steps=777))
    assert plan.train_iters == 16 * 777 and plan.synthetic == [] and plan.real.epochs == 16


def test_a_real_stream_in_pieces(prefixes, tmp_path, capsys):
    """--real-path p1 p2: one real stream tokenized in pieces; one pass is base_steps x gbs sequences shared by the
    pieces' sizes, and each piece is seen E times."""
    real, syn, _ = prefixes
    real2 = write_dataset(tmp_path / "real2", [300] * 20, seed=5)  # half the size of `real`
    out = tmp_path / "plan.json"
    argv = ["blend", "--real-path", real, real2, "--synthetic-path", syn, "--real-epochs", "4",
            "--synthetic-fraction", "0.75", "--seq-length", "64", "--global-batch-size", "4", "--output", str(out)]
    assert main(argv) == 0
    plan = json.loads(out.read_text())
    pieces = plan["real_parts"]
    assert plan["base_steps"] == (187 + 93) // 4 == 70  # both pieces' sequences per pass, whole batches
    assert [p["prefix"] for p in pieces] == [real, real2]
    assert [p["pass_sequences"] for p in pieces] == apportion(70 * 4, [187, 93]) == [187, 93]
    assert [p["sequences"] for p in pieces] == [4 * 187, 4 * 93] and [p["epochs"] for p in pieces] == [4, 4]
    assert sum(p["sequences"] for p in pieces) == plan["real"]["sequences"]
    assert real in capsys.readouterr().out
    assert main(argv[:-2] + ["--emit", "megatron-lm"]) == 0
    flags = capsys.readouterr().out.split()
    assert flags[1:5] == [f"{4 * 187 / plan['total_sequences']:.10g}", real, f"{4 * 93 / plan['total_sequences']:.10g}",
                          real2]


@pytest.mark.parametrize("flags,message", [
    (["--real-epochs", "1e9"], "more than 10,000,000: a typo in E or r? (--force, or force=true for megadoc pretrain"),
    (["--synthetic-fraction", "0.9999999999", "--synthetic-path", "SYN"], "more than 10,000,000"),
    (["--real-epochs", "1e-9"], "real_epochs: floor(46 x E 1e-09 / (1 - r 0)) = 0 steps; raise E"),
    (["--real-epochs", "1e16", "--force"], "beyond what any index can count"),
])
def test_absurd_plans_are_refused(prefixes, flags, message, capsys):
    real, syn, _ = prefixes
    flags = [syn if flag == "SYN" else flag for flag in flags]
    assert message in cli_error(["--real-path", real, "--seq-length", "64", "--global-batch-size", "4", *flags],
                                capsys)


def test_force_takes_a_huge_plan(prefixes, capsys):
    real, _, _ = prefixes
    assert main(["blend", "--real-path", real, "--seq-length", "64", "--global-batch-size", "4", "--real-epochs",
                 "1e9", "--force"]) == 0
    assert "train_iters 46,000,000,000" in capsys.readouterr().out
