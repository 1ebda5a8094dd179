"""Tests of Megatron-Bridge training, evaluation and export. They run in .venv312 (Python 3.12, Megatron-Bridge),
where tests/test_bridge.py launches them; an environment without Megatron-Bridge (the main .venv) does not collect
them. This process runs Bridge on the CPU as its torchrun workers do (cpu_bridge: test-only stand-ins and patches)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

if importlib.util.find_spec("megatron.bridge") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    sys.path.insert(0, str(HERE))
    import cpu_bridge

    cpu_bridge.activate()


@pytest.fixture(scope="session")
def blend_data(tmp_path_factory, dclm_sample, llama3_hf) -> dict:
    """A real stream (100 DCLM documents), a synthetic stream in the megadoc `parts` format (each record two other
    DCLM documents: no LLM runs here, what matters is a second stream written as megadocs) and a validation stream
    (18 more documents), tokenized with `megadoc tokenize` and the Llama 3 tokenizer."""
    folder = tmp_path_factory.mktemp("blend")
    docs = [json.loads(line) for line in dclm_sample.read_text().splitlines()]
    corpora = {"real": [{"id": d["id"], "text": d["text"]} for d in docs[:100]],
               "syn": [{"id": f"m{i}", "parts": [docs[i]["text"], docs[i + 1]["text"]]} for i in range(100, 200, 2)],
               "valid": [{"id": d["id"], "text": d["text"]} for d in docs[200:218]]}
    for name, records in corpora.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        subprocess.run([str(BIN / "megadoc"), "tokenize", "--input", str(folder / f"{name}.jsonl"), "--output-prefix",
                        str(folder / name), "--tokenizer-model", str(llama3_hf), "--append-eod", "--no-progress"],
                       check=True, capture_output=True, timeout=120)
    return {"real": str(folder / "real"), "syn": str(folder / "syn"), "valid": str(folder / "valid"),
            "folder": folder}
