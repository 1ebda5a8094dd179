"""The Megatron-Bridge tests (tests/bridge/), run inside .venv312: Megatron-Bridge 0.6.2 needs Python 3.12 and
megatron-core 0.19, beside the main environment's 3.11 / 0.16.1. `bash install.sh --dev` builds .venv312 the way a
NeMo container gets megadoc: the stack first, then `pip install -e ".[nemo]"`, which must replace none of it."""

import json
import re
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PYTHON312 = ROOT / ".venv312" / "bin" / "python"
EXPECTED = ("test_300m_recipe_is_the_papers_model_and_optimizer", "test_production_settings_follow_transformer_engine",
            "test_every_size_builds_from_its_dimensions", "test_yaml_round_trip",
            "test_cli_overrides_move_parallel_sizes_and_the_plan",
            "test_megatron_lm_provider_reads_real_megatron_lm_arguments", "test_bridge_pretrain_trains_the_plan",
            "test_core_loop_on_the_same_plan_consumes_the_same_samples",
            "test_megadoc_eval_of_a_bridge_checkpoint_is_bridges_own_model",
            "test_export_is_autobridges_and_transformers_reproduces_the_logits",
            "test_bridge_pipeline_dry_run_launches_the_megadoc_recipe", "test_weight_decay_mask_param_groups")
STACK = {"torch", "numpy", "megatron-core", "megatron-bridge", "transformer-engine", "transformers", "nemo-run"}
"""What a NeMo container brings and megadoc must leave as it is."""


def _venv312() -> str:
    assert PYTHON312.exists(), ".venv312 is missing: `bash install.sh --dev` builds the Megatron-Bridge environment"
    return str(PYTHON312)


def test_bridge_tests_in_python312_env():
    result = subprocess.run([_venv312(), "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/bridge"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = set(re.findall(r"^PASSED \S+::(\w+)", result.stdout, re.MULTILINE))
    assert passed >= set(EXPECTED), result.stdout[-3000:]
    assert not re.search(r"^(SKIPPED|FAILED|ERROR)", result.stdout, re.MULTILINE), result.stdout[-3000:]


def test_nemo_extra_installs_megadoc_and_replaces_nothing(tmp_path):
    """`pip install -e ".[nemo]"` in the container stand-in, as a NeMo user runs it (no constraints file): pip's own
    plan installs megadoc and nothing else; the stack stays."""
    report = tmp_path / "report.json"
    result = subprocess.run([_venv312(), "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                             "--report", str(report), "-e", ".[nemo]"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert planned == {"megadoc"}, planned
    assert not planned & STACK
