"""Tests of the Megatron-Bridge recipes. They run in .venv312 (Python 3.12, Megatron-Bridge), where
tests/test_bridge.py launches them; an environment without Megatron-Bridge (the main .venv) does not collect them."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("megatron.bridge") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for bridge_stubs
    import bridge_stubs

    bridge_stubs.activate()
