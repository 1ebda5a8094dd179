"""TEST-ONLY: with this folder on PYTHONPATH, every torchrun worker (LOCAL_RANK set) of the process, and the
checkpoint writer it spawns, runs Bridge on the CPU (tests/bridge/cpu_bridge.py), and with MEGADOC_TEST_RECORD=DIR
records the samples its trainer fetches. The torchrun launcher itself (no LOCAL_RANK) is left alone, and so is
`megadoc train` (the Megatron-Core loop needs none of it; the recording aside)."""

import os
import sys
from pathlib import Path

if os.environ.get("LOCAL_RANK") is not None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bridge
    import cpu_bridge

    if sys.argv[1:2] != ["train"]:
        cpu_bridge.activate()
    if os.environ.get("MEGADOC_TEST_RECORD"):
        cpu_bridge.record_samples(Path(os.environ["MEGADOC_TEST_RECORD"]))
