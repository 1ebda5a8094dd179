"""Strings from a pipeline YAML that reach sbatch scripts cannot inject commands: every string (corpus paths,
work_dir, model, engine args, partition, account, qos, time, mem, python) with newlines refused, and quotes,
`$(...)`, `;`, `#` and spaces written so that sbatch and bash read them back whole. The scripts are run for real
under bash with stand-ins for srun/scontrol/python that only record their arguments (no cluster needed).
`slurm.<kind>.setup` lines are shell commands by design and are left out.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from megadoc.cli import main
from megadoc.launch.pipeline import load_pipeline
from megadoc.slurm.submit import submit

HOSTILE = "x $(touch PWNED) `touch PWNED` ; touch PWNED & 'q' \"dq\" #h \\b"


def sbatch_words(line: str) -> list[str]:
    """An #SBATCH line's arguments as sbatch reads them (src/sbatch/opt.c `_get_argument`): whitespace splits
    outside double quotes, a backslash escapes the next character, an unescaped '#' ends the line."""
    words, word, quoted, escape, started = [], [], False, False, False
    for char in line.removeprefix("#SBATCH"):
        if escape:
            word.append(char)
            escape = False
        elif char == "\\":
            escape, started = True, True
        elif char == '"':
            quoted, started = not quoted, True
        elif char == "#":
            break
        elif char.isspace() and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
            started = True
    if started:
        words.append("".join(word))
    return words


@pytest.fixture
def hostile(tmp_path) -> Path:
    folder = tmp_path / f"dir {HOSTILE}"
    folder.mkdir()
    resources = {"time": f"01:00:00 {HOSTILE}", "mem": HOSTILE, "python": "python"}
    config = {
        "name": "inject", "work_dir": f"work {HOSTILE}", "corpus": [f"corpus {HOSTILE}.jsonl"],
        "json_key": HOSTILE, "tokenizer": {"model": f"tok {HOSTILE}"}, "methods": ["stitched"],
        "generate": {"rephrases": 2, "rationales": None, "model": f"/m {HOSTILE}",
                     "engine_args": ["--engine-arg", f"k={HOSTILE}"]},
        "train": {"recipe": "tiny"},
        "slurm": {"partition": HOSTILE, "account": HOSTILE, "qos": HOSTILE,
                  **{kind: resources for kind in ("cpu", "generate", "train", "eval")}},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_hostile_strings_reach_sbatch_and_commands_whole(hostile, tmp_path):
    config = load_pipeline(hostile)
    scripts = {job.step.name: job.script for job in submit(config, dry_run=True, log=lambda line: None)}
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "argv.log"
    for name in ("srun", "scontrol", "python"):  # record argv, one argument per line, then succeed
        (stubs / name).write_text(f'#!/bin/bash\nprintf "%s\\n" "$(basename "$0")" "$@" "--end--" >> "{log}"\n')
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "7",
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_NODELIST": "node1"}
    for name, script in scripts.items():
        text = script.read_text()
        options = dict(word.split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH ")
                       for word in sbatch_words(line) if "=" in word)
        assert options["--partition"] == options["--account"] == options["--qos"] == HOSTILE, name
        assert options["--chdir"] == config.work_dir and options["--time"] == f"01:00:00 {HOSTILE}", name
        assert options["--mem"] == HOSTILE and options["--job-name"] == f"inject-{name}", name
        result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, (name, result.stderr)
    assert not list(tmp_path.rglob("PWNED")), "a command from the YAML ran"
    calls = [call.split("\n") for call in log.read_text().split("--end--\n") if call]
    argv = [arg for call in calls for arg in call]
    for expected in (f"{config.corpus[0]}", HOSTILE, f"tok {HOSTILE}", f"/m {HOSTILE}", f"k={HOSTILE}"):
        assert expected in argv, expected
    assert all((Path(config.work_dir) / ".done" / name).exists() for name in scripts)


@pytest.mark.parametrize("key, value", [("name", "a\nb"), ("name", "job $(x)"), ("work_dir", "w\nrm -rf /"),
                                        ("slurm", {"partition": "gpu\ntouch PWNED"}),
                                        ("slurm", {"cpu": {"python": "python\rx"}})])
def test_control_characters_and_unsafe_names_are_refused(tmp_path, capsys, key, value):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "work_dir": "w", "corpus": ["c.jsonl"], key: value}))
    assert main(["submit", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"control character|must be letters", err), err
    assert not (tmp_path / "w").exists()


def test_unexpected_exceptions_end_in_one_line(tmp_path, capsys, monkeypatch):
    """The CLI's catch-all: a failure nobody foresaw is one line naming where it happened; --debug shows the trace."""
    import megadoc.launch.local

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "work_dir": "w", "corpus": ["c.jsonl"]}))

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(megadoc.launch.local, "run_local", broken)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "KeyError" in err and "--debug" in err
    assert main(["run", str(path), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
