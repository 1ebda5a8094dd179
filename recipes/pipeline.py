"""The whole method as one pipeline of `megadoc` commands, for `megadoc demo` (run here) and `megadoc submit` (Slurm).

A pipeline YAML names a corpus, a tokenizer and each stage's settings; `steps(config)` turns it into a list of steps,
each a few `megadoc` command lines plus the steps it waits for:

    split -> tokenize (real, validation) ------------------------------------+
          -> generate rephrase  (array: one task per shard) -> assemble simple, stitched -> train <method> -> eval
          -> generate rationale (array: one task per shard) -> assemble stretched      -> train real     -> eval
                                                                                          every eval -> report

Every step is a plain command line, so the same list runs on a laptop (`run_local`), in sbatch scripts, or through
nemo-run, and every stage it calls resumes where it stopped (generation chunks, tokenize checkpoints, training
checkpoints via `--load` = `--save`). The local runner also marks finished steps, so a re-run skips them.
"""

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError

METHODS = ("simple", "stitched", "stretched")
"""The synthetic streams: rephrases shuffled, rephrases stitched into megadocs, rationales stretched into a doc."""

GENERATION_OF = {"simple": "rephrase", "stitched": "rephrase", "stretched": "rationale"}
"""Which generations each stream is assembled from."""


@dataclass
class SplitStage:
    """Validation documents held out before anything is generated (megadoc split)."""

    iid_docs: int = 1000
    """Random real documents for the i.i.d. loss (the paper: ~1k DCLM documents)."""
    long_docs: int = 500
    """Long documents for loss by token position (the paper: 500)."""
    long_min_tokens: int | None = None
    """Token length a long document needs; None: the training seq_length + 1 (one full window)."""
    seed: int = 1234


@dataclass
class GenerateStage:
    """Synthetic generations with vLLM (megadoc generate); None in `rephrases`/`rationales` skips that kind."""

    rephrases: int | None = 4
    """G rephrases per document (stitched and simple streams)."""
    rationales: int | None = 4
    """G rationales inserted per document (stretched stream)."""
    rephrase_max_tokens: int = 1024
    """New tokens per rephrase (the paper: 1024)."""
    rationale_max_tokens: int = 512
    """New tokens per rationale (the paper: 512)."""
    num_shards: int = 1
    """Generation shards: one Slurm array task each."""
    chunk_docs: int = 64
    """Documents per committed chunk: the most work a killed task redoes."""
    model: str | None = None
    """HF model directory (None: the embedded SmolLM2-135M-Instruct)."""
    seed: int = 0
    """Engine seed."""
    engine_args: list[str] = field(default_factory=list)
    """More `megadoc generate` flags, e.g. ["--tensor-parallel-size", "8", "--max-model-len", "8192"]."""


@dataclass
class TrainStage:
    """One training run per method plus the real-only baseline (megadoc train), all with the same recipe."""

    recipe: str = "300m"
    """Model recipe (megadoc_recipes.models.MODELS)."""
    seq_length: int | None = None
    """Context length; None: the recipe's."""
    global_batch_size: int = 64
    micro_batch_size: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.8
    real_epochs: float = 8
    """E for the synthetic runs."""
    synthetic_fraction: float = 0.75
    """r for the synthetic runs."""
    real_only_epochs: float = 16
    """E of the real-only baseline (the paper's tuned 16)."""
    real_only_weight_decay: float | None = 1.6
    """Weight decay of the real-only baseline (the paper's tuned 1.6); None: weight_decay."""
    base_steps: int | None = None
    """Global batches per real pass; None: one full pass over the real tokens."""
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    nproc_per_node: int = 1
    """Processes per node (torchrun); TP x PP x DP must equal nodes x this."""
    save_interval: int | None = None
    """Checkpoint every N steps (a killed or requeued run resumes there); None: at the end only."""
    seed: int = 1234


@dataclass
class EvalStage:
    """Evaluation of every trained run (megadoc eval)."""

    micro_batch_size: int = 4
    bucket_size: int = 64
    """Positions per bucket of the loss-by-position curve."""


@dataclass
class SlurmStage:
    """How `megadoc submit` asks Slurm for resources; ignored by the local runner."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    """Wall-clock limit of each job (sbatch --time)."""
    cpus_per_task: int = 2
    mem: str | None = None
    """sbatch --mem, e.g. '64G'; None: the partition's default."""
    gpus_per_node: int = 0
    """GPUs per node for generation, training and evaluation (0 on CPU clusters)."""
    train_nodes: int = 1
    """Nodes of each training job."""
    container_image: str | None = None
    """Run every step inside this container (pyxis: srun --container-image)."""
    container_mounts: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    """Shell lines each job runs first, e.g. ['source /opt/megadoc/.venv/bin/activate']."""
    megadoc: str = "megadoc"
    """The megadoc command on the compute nodes."""
    python: str = "python"
    """The Python on the compute nodes (torchrun launches `python -m megadoc`)."""
    extra_sbatch: list[str] = field(default_factory=list)
    """More #SBATCH lines' options, e.g. ['--exclusive']."""


@dataclass
class PipelineConfig:
    """One run of the whole method over one corpus."""

    name: str
    """Names the jobs and runs."""
    work_dir: str
    """Every output goes under here (relative paths are relative to the YAML's folder)."""
    corpus: list[str]
    """Corpus files or globs (JSONL, Parquet, HF folders)."""
    tokenizer_model: str = "smollm2"
    """Tokenizer of every token file (megadoc tokenize --tokenizer-model), e.g. a Llama 3 HF folder."""
    text_key: str = "text"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Synthetic streams to build and train on; the real-only baseline always trains."""
    split: SplitStage = field(default_factory=SplitStage)
    generate: GenerateStage = field(default_factory=GenerateStage)
    train: TrainStage = field(default_factory=TrainStage)
    eval: EvalStage = field(default_factory=EvalStage)
    slurm: SlurmStage = field(default_factory=SlurmStage)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise MegadocError(f"methods: {', '.join(unknown)} not in {', '.join(METHODS)}")
        for method in self.methods:
            kind = GENERATION_OF[method]
            if getattr(self.generate, kind + "s") is None:
                raise MegadocError(f"methods: {method} needs {kind}s, but generate.{kind}s is null")
        if self.train.nproc_per_node < 1 or self.slurm.train_nodes < 1:
            raise MegadocError("train.nproc_per_node and slurm.train_nodes must be >= 1")

    @property
    def seq_length(self) -> int:
        from megadoc_recipes.models import MODELS

        if self.train.recipe not in MODELS:
            raise MegadocError(f"train.recipe: {self.train.recipe!r} is not one of {', '.join(sorted(MODELS))}")
        return self.train.seq_length or MODELS[self.train.recipe].seq_length


# ---------------------------------------------------------------------------------------------------- YAML


def _build(cls, data, where: str):
    """A dataclass from a YAML mapping; unknown keys are an error (a typo must not be silently ignored)."""
    if not isinstance(data, dict):
        raise MegadocError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MegadocError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        values[name] = _build(type(default), value, f"{where}.{name}") if is_dataclass(default) else value
    try:
        return cls(**values)
    except TypeError as error:
        raise MegadocError(f"{where}: {error}") from None


def load_pipeline(path: str | os.PathLike) -> PipelineConfig:
    """Read a pipeline YAML; relative paths in it are taken from the YAML's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MegadocError(f"{path}: cannot read the pipeline ({str(error).splitlines()[0]})") from None
    config = _build(PipelineConfig, data, str(path))
    base = path.resolve().parent
    config.work_dir = str(base / config.work_dir)
    config.corpus = [c if Path(c).is_absolute() else str(base / c) for c in config.corpus]
    return config


def dump_pipeline(config: PipelineConfig, path: str | os.PathLike) -> None:
    with atomic_write(path, "w") as handle:
        yaml.safe_dump(asdict(config), handle, sort_keys=False)


# ---------------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One unit of the pipeline: command lines run in order, once every step in `after` has finished."""

    name: str
    commands: list[list[str]]
    """`megadoc` argument lists (without the program name)."""
    after: tuple[str, ...] = ()
    array: int | None = None
    """Array tasks: generation shards; each command then gets its task's --shard-index."""
    distributed: bool = False
    """Launched with torchrun over the training world (training and evaluation)."""
    gpus: bool = False
    """Needs the GPUs of a node (generation, training, evaluation)."""


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, under the work directory."""

    root: Path

    @property
    def split(self) -> Path:
        return self.root / "split"

    def tokens(self, name: str) -> str:
        return str(self.root / "tokens" / name)

    def generations(self, kind: str) -> str:
        return str(self.root / "generations" / kind)

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    @property
    def registry(self) -> str:
        return str(self.root / "runs.csv")

    @property
    def report(self) -> str:
        return str(self.root / "report")


def run_name(config: PipelineConfig, method: str) -> str:
    """The paper's run-name pattern with this pipeline's values, e.g.
    demo-tiny-x4-real+stitched4^0.75-cos-lr0.0030-wd0.80-bs8."""
    train = config.train
    if method == "real":
        wd = train.real_only_weight_decay if train.real_only_weight_decay is not None else train.weight_decay
        data, epochs = "real", train.real_only_epochs
    else:
        g = getattr(config.generate, GENERATION_OF[method] + "s")
        data, epochs, wd = f"real+{method}{g}^{train.synthetic_fraction:g}", train.real_epochs, train.weight_decay
    return f"{config.name}-{train.recipe}-x{epochs:g}-{data}-cos-lr{train.lr:.4f}-wd{wd:.2f}-bs{train.global_batch_size}"


def _tokenizer(config: PipelineConfig) -> list[str]:
    return ["--tokenizer-model", config.tokenizer_model]


def _split_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    s = config.split
    split = Step("split", [["split", "--input", *config.corpus, "--output-dir", str(paths.split),
                            "--text-key", config.text_key, "--iid-docs", str(s.iid_docs), "--long-docs",
                            str(s.long_docs), "--long-min-tokens", str(s.long_min_tokens or config.seq_length + 1),
                            "--seed", str(s.seed), *_tokenizer(config)]])
    tokenize = [["tokenize", "--input", str(paths.split / f"{name}.jsonl"), "--output-prefix", paths.tokens(name),
                 "--append-eod", "--no-progress", *_tokenizer(config)] for name in ("train", "valid_iid", "valid_long")]
    return [split, Step("tokenize", tokenize, after=("split",))]


def _generate_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    g = config.generate
    steps = []
    for kind in sorted({GENERATION_OF[m] for m in config.methods}):
        command = ["generate", kind, "--input", str(paths.split / "train.jsonl"), "--output", paths.generations(kind),
                   "--text-key", config.text_key, "-G", str(getattr(g, kind + "s")),
                   "--max-tokens", str(getattr(g, kind + "_max_tokens")), "--num-shards", str(g.num_shards),
                   "--chunk-docs", str(g.chunk_docs), "--exclude-ids", str(paths.split / "validation_ids.txt"),
                   "--seed", str(g.seed), *(["--model", g.model] if g.model else []), *map(str, g.engine_args)]
        steps.append(Step(f"generate-{kind}", [command], after=("split",), array=g.num_shards, gpus=True))
    return steps


def _assemble_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    return [Step(f"assemble-{method}",
                 [["assemble", "--method", method, "--input", str(paths.split / "train.jsonl"),
                   "--json-keys", config.text_key, "--generations", paths.generations(GENERATION_OF[method]),
                   "--output-prefix", paths.tokens(method), "--seed", str(config.train.seed),
                   "--tokenizer-model", config.tokenizer_model]],
                 after=(f"generate-{GENERATION_OF[method]}",))
            for method in config.methods]


def _train_command(config: PipelineConfig, paths: Paths, method: str) -> list[str]:
    t = config.train
    save = str(paths.run(method))
    command = ["train", "--recipe", t.recipe, "--seq-length", str(config.seq_length),
               "--real-path", paths.tokens("train"), "--global-batch-size", str(t.global_batch_size),
               "--micro-batch-size", str(t.micro_batch_size), "--lr", str(t.lr),
               "--tensor-model-parallel-size", str(t.tensor_model_parallel_size),
               "--pipeline-model-parallel-size", str(t.pipeline_model_parallel_size), "--seed", str(t.seed),
               "--save", save, "--load", save, *_tokenizer(config),
               "--registry", paths.registry, "--run-name", run_name(config, method), "--method", method]
    if method == "real":
        wd = t.real_only_weight_decay if t.real_only_weight_decay is not None else t.weight_decay
        command += ["--real-epochs", f"{t.real_only_epochs:g}", "--weight-decay", str(wd)]
    else:
        g = getattr(config.generate, GENERATION_OF[method] + "s")
        command += ["--real-epochs", f"{t.real_epochs:g}", "--weight-decay", str(t.weight_decay),
                    "--synthetic-path", paths.tokens(method), "--synthetic-fraction", f"{t.synthetic_fraction:g}",
                    "--generations", str(g)]
    if t.base_steps:
        command += ["--base-steps", str(t.base_steps)]
    if t.save_interval:
        command += ["--save-interval", str(t.save_interval)]
    return command


def _train_eval_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    steps = []
    for method in ["real", *config.methods]:
        after = ("tokenize",) if method == "real" else ("tokenize", f"assemble-{method}")
        steps.append(Step(f"train-{method}", [_train_command(config, paths, method)], after=after,
                          distributed=True, gpus=True))
        evaluate = ["eval", "--load", str(paths.run(method)), "--valid-path", paths.tokens("valid_iid"),
                    "--long-valid-path", paths.tokens("valid_long"),
                    "--output-dir", str(paths.run(method) / "eval"),
                    "--micro-batch-size", str(config.eval.micro_batch_size),
                    "--bucket-size", str(config.eval.bucket_size),
                    "--tensor-model-parallel-size", str(config.train.tensor_model_parallel_size),
                    "--pipeline-model-parallel-size", str(config.train.pipeline_model_parallel_size),
                    "--registry", paths.registry, "--run-name", run_name(config, method)]
        steps.append(Step(f"eval-{method}", [evaluate], after=(f"train-{method}",), distributed=True, gpus=True))
    return steps


def steps(config: PipelineConfig) -> list[Step]:
    """Every step of the pipeline, each after the steps it needs (a topological order)."""
    paths = Paths(Path(config.work_dir))
    evals = tuple(f"eval-{m}" for m in ["real", *config.methods])
    report = Step("report", [["report", "--registry", paths.registry, "--output-dir", paths.report]], after=evals)
    return [*_split_steps(config, paths), *_generate_steps(config, paths), *_assemble_steps(config, paths),
            *_train_eval_steps(config, paths), report]


# ---------------------------------------------------------------------------------------------------- local runner


def done_dir(config: PipelineConfig) -> Path:
    """Where every runner (here, sbatch, nemo-run) marks a finished step: `<step>`, and `<step>.task<i>` for a
    finished array task."""
    return Path(config.work_dir) / ".done"


def _local_argv(config: PipelineConfig, step: Step, command: list[str]) -> list[str]:
    """The process a command runs as here: this Python's `-m megadoc`, under torchrun for distributed steps."""
    if step.distributed and config.train.nproc_per_node > 1:
        return [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node",
                str(config.train.nproc_per_node), "-m", "megadoc", *command]
    return [sys.executable, "-m", "megadoc", *command]


def run_local(config: PipelineConfig, only: set[str] | None = None, log=print) -> list[str]:
    """Run the steps here in order, skipping those marked done by an earlier run; returns the steps run.

    A step's marker is written only after all its commands succeed, so a killed run redoes at most the step it was
    in, and that step's stage resumes from its own checkpoints.
    """
    markers = done_dir(config)
    markers.mkdir(parents=True, exist_ok=True)
    ran = []
    for step in steps(config):
        if only is not None and step.name not in only:
            continue
        marker = markers / step.name
        if marker.exists():
            log(f"[{step.name}] done earlier, skipped")
            continue
        start = time.perf_counter()
        for task in range(step.array or 1):
            for command in step.commands:
                command = command + (["--shard-index", str(task)] if step.array else [])
                log(f"[{step.name}{f' {task + 1}/{step.array}' if step.array else ''}] megadoc {' '.join(command)}")
                result = subprocess.run(_local_argv(config, step, command))
                if result.returncode:
                    raise MegadocError(f"step {step.name} failed (exit {result.returncode}); re-run to resume")
        marker.write_text(f"{time.perf_counter() - start:.1f}\n")
        log(f"[{step.name}] finished in {time.perf_counter() - start:.0f} s")
        ran.append(step.name)
    return ran
