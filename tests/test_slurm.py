"""`megadoc submit` on a real one-node Slurm started by slurm/local-cluster.sh (Debian's slurmctld, slurmd, munge).

- the dry-run scripts hold the configured resources, arrays, containers and dependencies (no Slurm needed);
- a small pipeline (16 real DCLM documents, SmolLM2 rephrases, the tiny recipe) goes through real sbatch end to end:
  2 generation shards as two array jobs (a split past max_array_size), dependencies, training under srun + torchrun,
  evaluation and the report; while the shards are generating, shard 0's task is requeued (as a preemption does)
  and shard 1's gets USR1 (as `--signal` sends before the time limit: it requeues itself), and both finish from
  their committed chunks with every document's generations present exactly once;
- nemo-run's SlurmExecutor writes a training sbatch with the same resources (in the Python 3.12 environment);
- with train.backend: bridge, training runs Megatron-Bridge's pretrain and evaluation reads its checkpoint, each in
  the environment its slurm section names (the Python 3.12 one plays the NeMo container), and the report lists it.

The cluster tests need root (the daemons) and apt (the packages); they skip, saying why, only without them.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from megadoc.cli import main as cli_main
from megadoc.errors import MegadocError
from megadoc.preprocess.generate.shards import iter_rows
from megadoc.launch.pipeline import load_pipeline, steps
from megadoc.slurm.sbatch import array_spec
from megadoc.slurm.submit import submit
from megadoc.training.registry import read_registry

ROOT = Path(__file__).resolve().parents[1]
SAMPLE40 = ROOT / "tests" / "data" / "dclm_sample40.jsonl"
CLUSTER = ROOT / "slurm" / "local-cluster.sh"
VENV = Path(sys.executable).parent
VENV312 = ROOT / ".venv312" / "bin" / "python"
NAME = "slurmtest"
"""Job-name prefix of every job these tests submit (teardown cancels what is left of them)."""

KINDS = ("cpu", "generate", "train", "eval")


def every_kind(**resources) -> dict:
    """The same resources for every kind of step."""
    return {kind: dict(resources) for kind in KINDS}


NODE = {"time": "01:30:00", "mem": "64G", "cpus_per_task": 8, "container_image": "nvcr.io/nvidia/nemo:25.09",
        "container_mounts": ["/lustre:/lustre", "/data:/data:ro"],
        "setup": ["source /opt/megadoc/.venv/bin/activate", "export HF_HUB_OFFLINE=1"]}
VLLM = {**NODE, "container_image": "vllm/vllm-openai:v0.11.0", "python": "python3",
        "setup": ["source /opt/megadoc/.venv-vllm/bin/activate", "export HF_HUB_OFFLINE=1"]}
NEMO = {**NODE, "python": "/usr/bin/python3", "cpus_per_task": None, "gpus_per_node": 8, "nodes": 2}
"""On clusters vLLM and NeMo live in different containers: generation in vLLM's, training and evaluation in NeMo's
(with CPUs left to their default, 3 per rank)."""
CLUSTER_RESOURCES = {
    "partition": "gpu", "account": "proj-llm", "qos": "high", "extra_sbatch": ["--exclusive"], "cpu": NODE,
    "generate": {**VLLM, "gpus_per_node": 8}, "train": NEMO, "eval": NEMO,
}


TRAIN = {"recipe": "tiny", "global_batch_size": 8, "base_steps": 2, "real_epochs": 1, "real_only_epochs": 1,
         "synthetic_fraction": 0.5}


def write_pipeline(folder: Path, slurm: dict, **overrides) -> Path:
    """A pipeline YAML over the first 16 documents of the DCLM sample, tiny everywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(SAMPLE40.read_text().splitlines(keepends=True)[:16]))
    config = {
        "name": NAME, "work_dir": "work", "corpus": [corpus.name], "methods": ["stitched"],
        "split": {"iid_docs": 2, "long_docs": 2},
        "generate": {"rephrases": 2, "rationales": None, "rephrase_max_tokens": 16, "num_shards": 2,
                     "chunk_docs": 1, "engine_args": ["--max-model-len", "2048"]},
        "train": TRAIN,
        "eval": {"micro_batch_size": 4, "bucket_size": 16},
        "slurm": slurm,
    }
    for key, value in overrides.items():
        config[key] = value
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sbatch_options(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


# ---------------------------------------------------------------------------------------------------- dry run


def test_dry_run_scripts_hold_the_resources(tmp_path, capsys):
    path = write_pipeline(tmp_path, CLUSTER_RESOURCES, train={**TRAIN, "nproc_per_node": 8})
    assert cli_main(["submit", str(path), "--dry-run"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    config = load_pipeline(path)
    names = [step.name for step in steps(config)]
    scripts = {name: (tmp_path / "work" / "slurm" / "scripts" / f"{i:02d}-{name}.sbatch").read_text()
               for i, name in enumerate(names, start=1)}

    # Submission order and dependencies: each step after exactly the steps it needs, by their job ids.
    assert [line.split("]")[0][1:] for line in printed] == names
    for line, step in zip(printed, steps(config)):
        dependency = f" --dependency=afterok:{':'.join(f'<{a}>' for a in step.after)} " if step.after else " "
        assert f"sbatch --parsable{dependency}/" in line, line
    assert not (tmp_path / "work" / "slurm" / "jobs.json").exists()  # nothing submitted

    for name, script in scripts.items():
        kind = name.split("-")[0] if name.startswith(("generate", "train", "eval")) else "cpu"
        res = CLUSTER_RESOURCES[kind]
        options = sbatch_options(script)
        cpus = 3 * 8 if kind in ("train", "eval") else 8  # unset for training and evaluation: 3 per rank
        for expected in ("--partition=gpu", "--account=proj-llm", "--qos=high", "--time=01:30:00", "--mem=64G",
                         f"--cpus-per-task={cpus}", "--requeue", "--exclusive", f"--job-name={NAME}-{name}"):
            assert expected in options, (name, expected)
        assert ("--gpus-per-node=8" in options) == (kind != "cpu"), name
        nodes = 2 if kind in ("train", "eval") else 1
        assert f"--nodes={nodes}" in options and "--ntasks-per-node=1" in options, name
        body = script.split("\nset -eo pipefail")[1]
        assert body.index(res["setup"][0]) < body.index("-m megadoc")  # each kind's own environment, set up first
        flat = script.replace(" \\\n    ", " ")
        assert f"--container-image={res['container_image']} --container-mounts=/lustre:/lustre,/data:/data:ro" \
               in flat, name
        assert f"{res.get('python', 'python')} -m " in flat, name
        assert f"/work/.done/{name}" in script, name

    generate = scripts["generate-rephrase"]
    assert "--array=0-1" in sbatch_options(generate)
    assert "--output=" + str(tmp_path / "work" / "slurm" / "logs") + "/%x-%A_%a.out" in sbatch_options(generate)
    flat = generate.replace(" \\\n    ", " ")
    assert "python3 -m megadoc generate rephrase" in flat and "--num-shards 2" in flat
    assert "--tensor-parallel-size 1 --engines 8" in flat  # every GPU of the node busy: one engine per GPU
    assert 'shard="$((SLURM_ARRAY_TASK_ID + ${MEGADOC_SHARD_OFFSET:-0}))"' in flat and '--shard-index "$shard"' in flat
    assert 'for task in $(seq 0 1); do [ -e' in generate  # the last task marks the step

    # GPUs for training: Megatron-Bridge's pretrain with the megadoc recipe, on every node under torchrun.
    work = tmp_path / "work"
    train = scripts["train-stitched"].replace(" \\\n    ", " ")
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in train
    assert "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --container-image=" in train
    assert ("/usr/bin/python3 -m torch.distributed.run --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d "
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m megadoc pretrain '
            f"--registry {work}/runs.csv --method stitched --generations 2 tiny tokenizer_model=smollm2 "
            f"real_path={work}/tokens/train " in train)
    (launch,) = [line for line in train.splitlines() if "-m megadoc pretrain" in line]
    arguments = shlex.split(launch)[shlex.split(launch).index("tiny") + 1:]
    for argument in (f'synthetic_paths=["{work}/tokens/stitched"]', f'valid_paths=["{work}/tokens/valid_iid"]',
                     "real_epochs=1", "synthetic_fraction=0.5", "base_steps=2", "global_batch_size=8",
                     f"output_dir={work}/runs/stitched"):
        assert argument in arguments, argument
    step = scripts["train-stitched"].split("# --- the step")[1].split("# --- success")[0]
    long = [line for line in step.splitlines() if len(line) > 110 and len(shlex.split(line.rstrip(" \\"))) > 1]
    assert not long, long  # wrapped between key=value arguments (a single word longer than a line stays whole)
    assert "--array" not in train
    evaluate = scripts["eval-stitched"].replace(" \\\n    ", " ")
    assert f"-m megadoc eval --load {work}/runs/stitched/checkpoints " in evaluate  # Bridge's checkpoint folder

    # The same pipeline with the Megatron-Core loop instead.
    assert cli_main(["submit", str(path), "train.backend=core", "--dry-run", "--only", "train-real", "eval-real"]) == 0
    train = (tmp_path / "work" / "slurm" / "scripts" / "05-train-real.sbatch").read_text().replace(" \\\n    ", " ")
    assert "--nproc-per-node=8 --rdzv-backend=c10d" in train and "-m megadoc train --recipe tiny" in train
    evaluate = (tmp_path / "work" / "slurm" / "scripts" / "06-eval-real.sbatch").read_text()
    assert f"-m megadoc eval --load {work}/runs/real " in evaluate.replace(" \\\n    ", " ")


def test_dry_run_arrays_at_cluster_scale(tmp_path, capsys):
    """A throttle, a split past MaxArraySize (the steps after wait for every part) and requeue before the limit."""
    generate = {"gpus_per_node": 4, "array_limit": 2, "requeue_before_timeout": 300, "time": "01:00:00"}
    path = write_pipeline(tmp_path, {"max_array_size": 2, "generate": generate},
                          generate={"rephrases": 2, "rationales": None, "num_shards": 5, "tensor_parallel_size": 2})
    assert cli_main(["submit", str(path), "--dry-run"]) == 0
    lines = {line.split("]")[0][1:]: line for line in capsys.readouterr().out.splitlines() if line.startswith("[")}
    script = next((tmp_path / "work" / "slurm" / "scripts").glob("*-generate-rephrase.sbatch"))
    parts = lines["generate-rephrase"].split("] ", 1)[1].split(" ; ")
    assert parts == [f"sbatch --parsable --dependency=afterok:<split> --array={tasks} "
                     f"--export=ALL,MEGADOC_SHARD_OFFSET={offset} {script}"
                     for offset, tasks in ((0, "0-1%2"), (2, "0-1%2"), (4, "0%2"))]
    assert "--dependency=afterok:<generate-rephrase> " in lines["assemble-stitched"]
    text = script.read_text()
    options = sbatch_options(text)
    assert "--array=0-1%2" in options and "--signal=B:USR1@300" in options and "--requeue" in options
    assert "--tensor-parallel-size 2 --engines 2" in text.replace(" \\\n    ", " ")
    assert "trap requeue USR1" in text and 'scontrol requeue "$job"' in text
    assert ' > ' in text and '.task"$shard"' in text  # the done marker names the shard, not the task id
    assert "--signal" not in " ".join(sbatch_options((script.parent / "01-split.sbatch").read_text()))


def test_dry_run_without_gpus_or_container(tmp_path, capsys):
    path = write_pipeline(tmp_path, every_kind(time="00:10:00"))
    assert cli_main(["submit", str(path), "--dry-run", "--scripts-dir", str(tmp_path / "s"),
                     "--only", "generate-rephrase", "train-stitched"]) == 0
    out = capsys.readouterr().out
    assert "[generate-rephrase] sbatch --parsable /" in out  # its dependency was left out
    assert "[train-stitched] sbatch --parsable /" in out and "[split]" not in out
    generate = (tmp_path / "s" / "03-generate-rephrase.sbatch").read_text()
    options = sbatch_options(generate)
    assert not any(o.startswith(("--gpus", "--partition", "--account", "--qos", "--mem")) for o in options)
    assert "srun" not in generate and "container" not in generate
    assert "\npython -m megadoc generate rephrase" in generate and "--engines 1" in generate


def test_resubmission_skips_finished_steps_and_shards(tmp_path, capsys):
    path = write_pipeline(tmp_path, {})
    done = tmp_path / "work" / ".done"
    done.mkdir(parents=True)
    (done / "split").write_text("")
    (done / "generate-rephrase.task0").write_text("")  # shard 0 finished, shard 1 not
    assert cli_main(["submit", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[split] done earlier, skipped" in out
    assert "[tokenize] sbatch --parsable /" in out  # its only dependency is done
    generate = next((tmp_path / "work" / "slurm" / "scripts").glob("*-generate-rephrase.sbatch")).read_text()
    assert "#SBATCH --array=1\n" in generate
    assert array_spec((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    (done / "generate-rephrase.task1").write_text("")  # every shard done: the step is done
    assert cli_main(["submit", str(path), "--dry-run"]) == 0
    assert "[generate-rephrase] done earlier, skipped" in capsys.readouterr().out


def test_bad_pipelines_fail_in_one_line(tmp_path, capsys, monkeypatch):
    path = write_pipeline(tmp_path, {"partition": "gpu", "gpus": 8})
    assert cli_main(["submit", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key(s) gpus" in err
    path = write_pipeline(tmp_path, {})
    assert cli_main(["submit", str(path), "--dry-run", "--only", "train-simple"]) == 1
    assert "no step train-simple" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(MegadocError, match="squeue not found|sbatch not found"):
        (tmp_path / "work" / "slurm").mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / "slurm" / "jobs.json").unlink(missing_ok=True)
        submit(load_pipeline(path))


# ---------------------------------------------------------------------------------------------------- real Slurm


def _sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result


@pytest.fixture(scope="module")
def slurm():
    """A running one-node cluster (installed and started by slurm/local-cluster.sh); stopped after if we started it."""
    if os.geteuid() != 0:
        pytest.skip("real Slurm needs root: slurm/local-cluster.sh starts slurmctld, slurmd and munged")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it (slurm/local-cluster.sh install)")
    was_running = _sh("bash", str(CLUSTER), "status", check=False).returncode == 0
    _sh("bash", str(CLUSTER), "install", timeout=600)
    _sh("bash", str(CLUSTER), "start", timeout=120)
    state = os.environ.get("MEGADOC_SLURM_DIR", "/var/tmp/megadoc-slurm")
    os.environ.setdefault("SLURM_CONF", f"{state}/slurm.conf")
    yield
    listed = _sh("squeue", "--noheader", "--format=%F %j", check=False).stdout.split("\n")
    leftover = {line.split()[0] for line in listed if line.strip() and line.split()[1].startswith(NAME + "-")}
    if leftover:
        _sh("scancel", *sorted(leftover), check=False)
    if not was_running:
        _sh("bash", str(CLUSTER), "stop", timeout=120, check=False)


def queued(ids) -> set[str]:
    return set(_sh("squeue", "--noheader", "--format=%F").stdout.split()) & set(ids)


def job_records(job_id: str) -> list[dict]:
    """`scontrol show job` of a job (one record per array task) as dicts."""
    out = _sh("scontrol", "--oneliner", "show", "job", job_id).stdout
    return [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in out.splitlines() if line]


def logs(work: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in
                     sorted((work / "slurm" / "logs").glob("*.out")))


def manifest(work: Path, shard: int) -> dict | None:
    try:
        return json.loads((work / "generations" / "rephrase" / f"shard-{shard:05d}-of-00002" / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


@pytest.fixture(scope="module")
def pipeline_run(slurm, tmp_path_factory):
    """The whole small pipeline through sbatch. Its two generation shards go as two array jobs (max_array_size 1,
    as past a cluster's MaxArraySize); once a shard has committed a chunk, shard 0 is requeued (`scontrol requeue`,
    as a preemption does) and shard 1 gets USR1 (what `--signal` sends before the time limit: it requeues itself)."""
    folder = tmp_path_factory.mktemp("pipeline")
    setup = [f"source {VENV}/activate", "export VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=WARNING",
             # Jobs run side by side on few cores: one thread each, and the two generation shards on different cores.
             "export OMP_NUM_THREADS=1 "
             "VLLM_CPU_OMP_THREADS_BIND=$(( (${SLURM_ARRAY_TASK_ID:-0} + ${MEGADOC_SHARD_OFFSET:-0}) % $(nproc) ))"]
    resources = every_kind(cpus_per_task=1, time="00:20:00", setup=setup)
    resources["generate"].update(array_limit=1, requeue_before_timeout=60)
    path = write_pipeline(folder, {**resources, "max_array_size": 1})
    config = load_pipeline(path)
    work = Path(config.work_dir)
    start = time.perf_counter()
    jobs = {job.step.name: job.job_id for job in submit(config, source=str(path), log=lambda line: None)}
    with pytest.raises(MegadocError, match="still queued"):  # a second submission would run steps twice
        submit(config, log=lambda line: None)

    parts = jobs["generate-rephrase"].split(":")
    interrupted: dict[int, dict] = {}
    deadline = time.monotonic() + 600
    while queued(all_ids(jobs)) and time.monotonic() < deadline:
        for shard, interrupt in ((0, ["scontrol", "requeue"]), (1, ["scancel", "--signal=USR1", "--batch"])):
            state = manifest(work, shard)
            if shard not in interrupted and state and state["chunks"] and not state["complete"]:
                folder = work / "generations" / "rephrase" / f"shard-{shard:05d}-of-00002"
                interrupted[shard] = {c["file"]: (folder / c["file"]).read_bytes() for c in state["chunks"]}
                _sh(*interrupt, f"{parts[shard]}_0")
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    left = queued(all_ids(jobs))
    if left:
        _sh("scancel", *left, check=False)
    assert not left, f"jobs {left} still queued after 600 s\n{logs(work)}"
    print(f"\npipeline through Slurm: {elapsed:.0f} s")
    return config, work, jobs, interrupted


def all_ids(jobs: dict[str, str]) -> list[str]:
    """Every Slurm job id of a submission (a split array holds several)."""
    return [i for ids in jobs.values() for i in ids.split(":")]


def test_sbatch_refusal_cancels_the_jobs_before_it(slurm, tmp_path, capsys):
    # This cluster has no GPUs: sbatch takes split and tokenize, then refuses generation's --gpus-per-node.
    path = write_pipeline(tmp_path, {**every_kind(time="00:05:00"), "generate": {"gpus_per_node": 1}})
    assert cli_main(["submit", str(path)]) == 1
    captured = capsys.readouterr()
    assert "[split] job " in captured.out and "[tokenize] job " in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "sbatch refused 03-generate-rephrase.sbatch" in err and "cancelled the 2 job(s) submitted before it" in err
    ids = [line.split()[-1] for line in captured.out.splitlines() if line.startswith(("[split]", "[tokenize]"))]
    deadline = time.monotonic() + 30
    while queued(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not queued(ids)
    assert not (tmp_path / "work" / "slurm" / "jobs.json").exists()


def test_pipeline_runs_end_to_end_through_sbatch(pipeline_run):
    config, work, jobs, _ = pipeline_run
    names = [step.name for step in steps(config)]
    assert list(jobs) == names
    assert json.loads((work / "slurm" / "jobs.json").read_text()) == jobs
    records = {name: [r for i in ids.split(":") for r in job_records(i)] for name, ids in jobs.items()}
    failed = {name: [r["JobState"] for r in recs] for name, recs in records.items()
              if any(r["JobState"] != "COMPLETED" for r in recs)}
    assert not failed, f"{failed}\n{logs(work)}"
    assert len(records["generate-rephrase"]) == 2  # one task per shard
    assert len(jobs["generate-rephrase"].split(":")) == 2  # two array jobs: max_array_size 1

    # Dependencies held: no step started before every step it waits for had ended.
    for step in steps(config):
        started = min(r["StartTime"] for r in records[step.name])
        for before in step.after:
            assert started >= max(r["EndTime"] for r in records[before]), (step.name, before)

    # Every step's outputs, once.
    for name in names:
        assert (work / ".done" / name).exists(), name
    for name in ("train", "valid_iid", "valid_long", "stitched"):
        assert (work / "tokens" / f"{name}.bin").stat().st_size > 0 and (work / "tokens" / f"{name}.idx").exists()
    for method in ("real", "stitched"):
        run = work / "runs" / method
        assert (run / "latest_checkpointed_iteration.txt").exists()
        assert len((run / "train_log.jsonl").read_text().splitlines()) >= 1
    logs_by_step = Counter(p.name.rsplit("-", 1)[0].removeprefix(NAME + "-")
                           for p in (work / "slurm" / "logs").glob("*.out"))
    assert logs_by_step == Counter({name: 2 if name == "generate-rephrase" else 1 for name in names})

    # A second submission finds every step done and submits nothing.
    assert submit(config, log=lambda line: None) == []


def test_requeued_generation_task_finishes_without_duplicates(pipeline_run):
    config, work, jobs, interrupted = pipeline_run
    assert sorted(interrupted) == [0, 1], "a shard finished before it could be requeued"
    for shard, part in enumerate(jobs["generate-rephrase"].split(":")):
        (task,) = job_records(part)
        assert task["Restarts"] == "1" and task["JobState"] == "COMPLETED", (shard, task)
        directory = work / "generations" / "rephrase" / f"shard-{shard:05d}-of-00002"
        for name, content in interrupted[shard].items():  # resumed from its committed chunks, not redone
            assert (directory / name).read_bytes() == content
    assert manifest(work, 0)["complete"] and manifest(work, 1)["complete"]
    shard1_log = "".join(p.read_text(errors="replace") for p in (work / "slurm" / "logs").glob("*generate*.out")
                         if f"{jobs['generate-rephrase'].split(':')[1]}_0" in p.name)
    assert "time limit near, requeueing" in shard1_log  # shard 1 went through the USR1 trap

    rows = list(iter_rows(str(work / "generations" / "rephrase")))
    pairs = Counter((row["doc_id"], row["index"]) for row in rows)
    assert max(pairs.values()) == 1  # no duplicates
    train_ids = {json.loads(line)["id"] for line in (work / "split" / "train.jsonl").read_text().splitlines()}
    chunks = [c for shard in (0, 1) for c in manifest(work, shard)["chunks"]]
    assert sum(c["docs"] for c in chunks) == len(train_ids) == 12
    assert sorted(c["first_doc"] for c in chunks) == sorted(train_ids)  # one document per chunk, each once
    drops = sum(v for c in chunks for k, v in c.items() if k.startswith("drop:"))
    assert len(rows) + drops == 2 * len(train_ids)  # no gaps: G per document, generated or counted as dropped
    assert {doc for doc, _ in pairs} <= train_ids


# ---------------------------------------------------------------------------------------------------- nemo-run


def _venv312():
    assert VENV312.exists(), f"{VENV312} is absent: nemo-run lives in the Python 3.12 environment (bash install.sh --dev)"
    return str(VENV312)


def test_nemo_run_sbatch_holds_the_resources(tmp_path):
    python = _venv312()
    path = write_pipeline(tmp_path, CLUSTER_RESOURCES, train={**TRAIN, "nproc_per_node": 4})
    result = subprocess.run([python, "-m", "megadoc", "submit", str(path), "--dry-run", "--executor", "nemo-run",
                             "--only", "tokenize", "train-real"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (sbatch,) = (tmp_path / "work" / "slurm" / "nemorun" / "experiments").glob("*/*/train-real_sbatch.sh")
    assert f"[train-real] nemo-run {sbatch}" in result.stdout
    script = sbatch.read_text()
    options = sbatch_options(script)
    for expected in ("--account=proj-llm", "--partition=gpu", "--qos=high", "--time=01:30:00", "--mem=64G",
                     "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=12", "--exclusive",
                     f"--job-name={NAME}-train-real", "--dependency='afterok:<tokenize>'"):
        assert expected in options, expected
    assert "source /opt/megadoc/.venv/bin/activate\nexport HF_HUB_OFFLINE=1\n" in script
    assert "trap megadoc_mark_done EXIT" in script and f"/work/.done/train-real" in script
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ") and "torchrun" in line]
    assert "--container-image nvcr.io/nvidia/nemo:25.09 --container-mounts /lustre:/lustre,/data:/data:ro," in srun
    assert "torchrun --rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in srun
    # GPUs for training: Megatron-Bridge's pretrain with the megadoc recipe (megadoc pretrain), as with sbatch.
    assert "--nnodes 2 --nproc-per-node 4" in srun and " -m megadoc pretrain --registry " in srun
    assert " --method real tiny tokenizer_model=smollm2 " in srun and f" output_dir={tmp_path}/work/runs/real" in srun
    # The other steps of the same submission stay plain sbatch scripts.
    assert (tmp_path / "work" / "slurm" / "scripts" / "02-tokenize.sbatch").exists()
    assert not (tmp_path / "work" / "slurm" / "scripts" / "05-train-real.sbatch").exists()


def test_nemo_run_training_runs_on_slurm(pipeline_run):
    """Last: it retrains the finished pipeline's real-only run, this time launched by nemo-run."""
    python = _venv312()
    config, work, _, _ = pipeline_run
    losses = [json.loads(line)["loss"] for line in (work / "runs" / "real" / "train_log.jsonl").read_text().splitlines()]
    shutil.rmtree(work / "runs" / "real")
    (work / ".done" / "train-real").unlink()
    result = subprocess.run([python, "-m", "megadoc", "submit", str(Path(config.work_dir).parent / "pipeline.yaml"),
                             "--executor", "nemo-run", "--only", "train-real"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    job_id = json.loads((work / "slurm" / "jobs.json").read_text())["train-real"]
    deadline = time.monotonic() + 300
    while queued([job_id]) and time.monotonic() < deadline:
        time.sleep(1)
    (record,) = job_records(job_id)
    nemo_logs = "\n".join(p.read_text()[-3000:] for p in (work / "slurm" / "nemorun").rglob("*.out"))
    assert record["JobState"] == "COMPLETED", nemo_logs
    assert (work / ".done" / "train-real").read_text().strip() == f"slurm job {job_id}"
    assert (work / "runs" / "real" / "latest_checkpointed_iteration.txt").exists()
    # The same training as the sbatch script ran: the same seed and data give the same losses.
    assert [json.loads(line)["loss"] for line in (work / "runs" / "real" / "train_log.jsonl").read_text().splitlines()] \
        == losses


def test_bridge_backend_trains_evaluates_and_reports_on_slurm(pipeline_run, monkeypatch):
    """Last: the finished pipeline's real-only run again, with train.backend: bridge. Training runs Megatron-Bridge's
    pretrain (`megadoc pretrain`) in the Python 3.12 environment that plays the NeMo container (on this CPU-only
    machine with the test-only adaptations of tests/bridge/cpu_site), evaluation `megadoc eval` of its checkpoint in
    that environment too, the report in the main one; the run keeps its name and registry row, and the report
    lists it with the Bridge checkpoint's loss."""
    sys.path.insert(0, str(ROOT / "tests" / "bridge"))
    from cpu_bridge import CPU_OVERRIDES

    python = _venv312()
    for name in [name for name in os.environ if name.startswith("NVTE_")]:
        monkeypatch.delenv(name)  # set by models this process built; sbatch jobs inherit the submitter's environment
    config, work, _, _ = pipeline_run
    for step in ("train-real", "eval-real", "report"):
        (work / ".done" / step).unlink(missing_ok=True)
    bridge_env = [f"slurm.train.python={python}", f"slurm.eval.python={python}",
                  f"slurm.train.setup=[export PYTHONPATH={ROOT}/tests/bridge/cpu_site OMP_NUM_THREADS=1]",
                  f"train.bridge_overrides=[{', '.join(CPU_OVERRIDES)}]"]
    submitted = submit(load_pipeline(Path(config.work_dir).parent / "pipeline.yaml", ["train.backend=bridge",
                                                                                     *bridge_env]),
                       only={"train-real", "eval-real", "report"}, log=lambda line: None)
    jobs = {job.step.name: job.job_id for job in submitted}
    deadline = time.monotonic() + 600
    while queued(jobs.values()) and time.monotonic() < deadline:
        time.sleep(1)
    states = {name: job_records(job_id)[0]["JobState"] for name, job_id in jobs.items()}
    assert states == dict.fromkeys(("train-real", "eval-real", "report"), "COMPLETED"), f"{states}\n{logs(work)}"

    ckpt = work / "runs" / "real" / "checkpoints"
    train_log = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    assert [r["consumed_samples"] for r in train_log] == [8, 16] and (ckpt / "iter_0000002" / "run_config.yaml").exists()
    assert json.loads((ckpt / "megadoc_recipe.json").read_text())["backend"] == "bridge"
    results = json.loads((work / "runs" / "real" / "eval" / "eval.json").read_text())
    assert results["checkpoint"] == str(ckpt) and results["iteration"] == 2
    (row,) = [run for run in read_registry(work / "runs.csv") if run.method == "real"]
    assert row.checkpoint == str(ckpt) and row.iid_loss == results["iid_loss"]
    report = (work / "report" / "report.md").read_text()
    assert f"| real | 0 | {row.run} |" in report and f"{row.iid_loss:.4f}" in report
