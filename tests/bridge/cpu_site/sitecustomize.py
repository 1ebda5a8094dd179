"""TEST-ONLY: with this folder on PYTHONPATH, every torchrun worker (LOCAL_RANK set) of the process runs Bridge on
the CPU (tests/bridge/cpu_bridge.py), and with MEGADOC_TEST_RECORD=DIR records the samples its trainer fetches.
The torchrun launcher itself (no LOCAL_RANK) is left alone."""

import os
import sys
from pathlib import Path

if os.environ.get("LOCAL_RANK") is not None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bridge
    import cpu_bridge

    cpu_bridge.activate()
    if os.environ.get("MEGADOC_TEST_RECORD"):
        cpu_bridge.record_samples(Path(os.environ["MEGADOC_TEST_RECORD"]))
