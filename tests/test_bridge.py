"""The Megatron-Bridge recipe tests (tests/bridge/), run inside .venv312: Megatron-Bridge 0.6.2 needs Python 3.12
and megatron-core 0.19, beside the main environment's 3.11 / 0.16.1. `bash install.sh --dev` builds .venv312."""

import re
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PYTHON312 = ROOT / ".venv312" / "bin" / "python"
EXPECTED = ("test_300m_recipe_is_the_papers_model_and_optimizer", "test_every_size_builds_from_its_dimensions",
            "test_yaml_round_trip", "test_cli_overrides_move_parallel_sizes_and_the_plan",
            "test_bridge_pretrain_runs_on_cpu", "test_megatron_lm_provider_reads_real_megatron_lm_arguments",
            "test_weight_decay_mask_param_groups")


def test_bridge_recipes_in_python312_env():
    assert PYTHON312.exists(), ".venv312 is missing: `bash install.sh --dev` builds the Megatron-Bridge environment"
    result = subprocess.run([str(PYTHON312), "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/bridge"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = set(re.findall(r"^PASSED \S+::(\w+)", result.stdout, re.MULTILINE))
    assert passed >= set(EXPECTED), result.stdout[-3000:]
    assert not re.search(r"^(SKIPPED|FAILED|ERROR)", result.stdout, re.MULTILINE), result.stdout[-3000:]
