"""The whole method as one pipeline of `megadoc` commands, described by one YAML file.

A pipeline YAML names a corpus, a tokenizer and each stage's settings; `steps(config)` turns it into a list of steps,
each a few `megadoc` command lines plus the steps it waits for:

    split -> tokenize (real, budgets, validation) ---------------------------------+
          -> generate rephrase  (array: one task per shard) -> assemble simple, stitched -> train <method> -> eval
          -> generate rationale (array: one task per shard) -> assemble stretched      -> train real     -> eval
                                                          (ablations: their own streams and runs)  every eval -> report

Experiments (sections of their own): `data_budgets` trains real-only at nested subsets of the real training split
for the real-only data law (whose inverse is each method's data efficiency), `seeds` repeats training runs, and
`ablations` adds the paper's ablation presets (ABLATIONS), each a run under a method name of its own.

Every step is a plain command line, so the same list runs here (`megadoc run`, megadoc.launch.local), as sbatch
scripts or through nemo-run (megadoc.slurm), and every stage it calls resumes where it stopped (generation chunks,
tokenize checkpoints, training checkpoints via `--load` = `--save`). Where each step writes, and where executors
mark it done, is `Paths`.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.preprocess.assemble import GENERATION_OF, METHODS
from megadoc.preprocess.tokenizer import LLAMA3_TIKTOKEN_TYPES, MEGATRON_TIKTOKEN_TYPES, TokenizerSpec, tokenizer_flags
from megadoc.training.registry import REAL_ONLY

BACKENDS = ("bridge", "core")
"""Trainers of the train step: Megatron-Bridge's pretrain (NeMo) or megadoc's Megatron-Core loop."""


@dataclass
class SplitStage:
    """Validation documents held out before anything is generated (megadoc split)."""

    iid_docs: int = 1000
    """Random real documents for the i.i.d. loss (the paper: ~1k DCLM documents)."""
    long_docs: int = 500
    """Long documents for loss by token position (the paper: 500)."""
    long_min_tokens: int | None = None
    """Token length a long document needs; None: the training seq_length + 1 (one full window)."""
    short_docs: int = 0
    """Short documents for the short-document loss (the paper's dc_500_val_short: 500); 0: no short set."""
    short_max_tokens: int | None = None
    """Token length a short document may not exceed; None: a quarter of the training seq_length."""
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
    """Generation shards: one Slurm array task each, reading 1/num_shards of the corpus."""
    chunk_docs: int = 64
    """Documents per committed chunk: the most work a killed task redoes."""
    model: str | None = None
    """HF model directory (None: the embedded SmolLM2-135M-Instruct)."""
    seed: int = 0
    """Engine seed."""
    tensor_parallel_size: int = 1
    """GPUs per engine; a task runs slurm.generate.gpus_per_node / this many engines, one per GPU group."""
    engine_args: list[str] = field(default_factory=list)
    """More `megadoc generate` flags, e.g. ["--max-model-len", "8192", "--engine-arg", "max_num_seqs=512"]."""

    def engines(self, gpus_per_node: int) -> int:
        """Engines per generation task: every GPU of the node busy (one engine without GPUs)."""
        if gpus_per_node % self.tensor_parallel_size:
            raise MegadocError(f"slurm.generate.gpus_per_node {gpus_per_node} is not a multiple of "
                               f"generate.tensor_parallel_size {self.tensor_parallel_size}")
        return max(gpus_per_node // self.tensor_parallel_size, 1)

    def generations(self, kind: str) -> int | None:
        """G of a generation kind ('rephrase' or 'rationale')."""
        return self.rephrases if kind == "rephrase" else self.rationales

    def max_tokens(self, kind: str) -> int:
        return self.rephrase_max_tokens if kind == "rephrase" else self.rationale_max_tokens


@dataclass
class TrainStage:
    """One training run per method plus the real-only baseline (megadoc train), all with the same recipe."""

    recipe: str = "300m"
    """Model recipe (megadoc.recipes.models.MODELS)."""
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
    """Checkpoint every N steps (a killed or requeued run resumes there); None: at the end only (core), every
    train_iters / 20 steps (bridge)."""
    seed: int = 1234
    # ---- the trainer (issue 15)
    backend: str | None = None
    """`bridge`: Megatron-Bridge's pretrain with the megadoc recipe (`megadoc pretrain`, the NeMo path); `core`:
    megadoc's own Megatron-Core loop (`megadoc train`, the CPU/laptop path). None: bridge when slurm.train asks for
    GPUs, else core."""
    context_parallel_size: int = 1
    """Context parallelism (bridge only)."""
    sequence_parallel: bool = False
    """Sequence parallelism with TP > 1 (bridge only)."""
    bridge_overrides: list[str] = field(default_factory=list)
    """More `megadoc pretrain` key=value arguments (bridge only): recipe arguments such as wandb_project=megadoc, or
    ConfigContainer overrides such as model.recompute_granularity=selective."""


@dataclass
class EvalStage:
    """Evaluation of every trained run (megadoc eval)."""

    micro_batch_size: int = 4
    bucket_size: int = 64
    """Positions per bucket of the loss-by-position curve."""


@dataclass
class Resources:
    """What one kind of step asks Slurm for, and the environment it runs in (on clusters vLLM and NeMo live in
    different containers or Python environments)."""

    nodes: int = 1
    """Nodes of each job (training may span several; the other steps use one)."""
    gpus_per_node: int = 0
    """GPUs per node (0 on CPU clusters)."""
    cpus_per_task: int | None = None
    """CPUs of each task (one task per node, which runs all of the node's ranks); None: 2, and for training and
    evaluation 3 per rank (train.nproc_per_node): the rank and its two data-loader workers."""
    mem: str | None = None
    """sbatch --mem, e.g. '64G'; None: the partition's default."""
    time: str = "04:00:00"
    """Wall-clock limit (sbatch --time)."""
    container_image: str | None = None
    """Run the step inside this container (pyxis: srun --container-image)."""
    container_mounts: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    """Shell lines the job runs first, e.g. ['source /opt/megadoc/.venv/bin/activate']."""
    python: str = "python"
    """The Python with megadoc on the compute nodes (steps run `python -m megadoc ...`)."""
    array_limit: int | None = None
    """Array steps (generation): at most this many tasks of one array job run at once (sbatch --array=...%N)."""
    requeue_before_timeout: int | None = None
    """Seconds before the time limit at which Slurm signals the job (--signal=B:USR1@N); the job then stops its
    step and requeues itself, and the requeued job resumes from what was committed. None: a job that reaches its
    time limit fails (preemption with PreemptMode=REQUEUE requeues by itself: every job has --requeue)."""


@dataclass
class SlurmStage:
    """How the Slurm executors ask for resources; ignored by the local executor."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)
    """More #SBATCH options for every job, e.g. ['--exclusive']."""
    max_array_size: int | None = None
    """The cluster's MaxArraySize (array task ids stay below it): a longer array goes as several array jobs, and
    the steps after it wait for all of them. None: asked of the cluster (scontrol show config) when submitting,
    Slurm's default 1001 in a dry run."""
    cpu: Resources = field(default_factory=Resources)
    """split, tokenize, assemble and report."""
    generate: Resources = field(default_factory=Resources)
    """Each generation array task."""
    train: Resources = field(default_factory=Resources)
    """Each training job."""
    eval: Resources = field(default_factory=Resources)
    """Each evaluation job."""


# ---------------------------------------------------------------------------------------------------- experiments


@dataclass
class DataBudget:
    """One point of the real-only data law: a nested subset of the real training split (megadoc split --budgets),
    trained real-only with its own tuned settings (the paper tunes the real-only recipe per data size)."""

    budget: float
    """A fraction (<= 1) of the real training tokens, or a token count (> 1)."""
    real_epochs: float | None = None
    """E at this budget; None: train.real_only_epochs (the paper's 16)."""
    lr: float | None = None
    """Peak learning rate at this budget; None: train.lr."""
    weight_decay: float | None = None
    """Weight decay at this budget; None: train.real_only_weight_decay (the paper's 1.6)."""

    @property
    def label(self) -> str:
        return f"{self.budget:g}"


@dataclass
class DataBudgets:
    """Real-only runs at several real-token budgets: with the full split, the points the real-only data law
    L(D) = A / D^alpha + C is fitted to (>= 4 in all), so each method's data efficiency comes from this pipeline's own
    runs. With `methods` the methods see only a subset of the real split, and the law's larger budgets reach the
    real data a method is worth (Kim et al. 2025 fit their law over 1x to 8x the data the methods saw), so a data
    efficiency above 1 is read off the law instead of extrapolated beyond it."""

    budgets: list[Any] = field(default_factory=list)
    """Budgets besides the full split (which always runs): numbers (a fraction <= 1 or a token count > 1), or
    mappings {budget, real_epochs, lr, weight_decay} with that budget's tuned settings."""
    methods: float | None = None
    """The budget the methods use (their generations, streams and real data come from that subset; it also runs
    real only); None: the full split."""
    seeds: list[int] | None = None
    """Seeds of the real-only runs at the budgets (None: the pipeline's `seeds`; the full split's real-only run has
    the pipeline's): small budgets are cheap, and their repeats carry the law's uncertainty into the data-efficiency
    intervals."""

    def __post_init__(self):
        self.budgets = [budget if isinstance(budget, DataBudget) else
                        _build(DataBudget, budget if isinstance(budget, dict) else {"budget": budget},
                               f"data_budgets.budgets[{i}]") for i, budget in enumerate(self.budgets)]
        if self.methods is not None and self.methods not in [budget.budget for budget in self.budgets]:
            self.budgets.append(DataBudget(self.methods))
        labels = [budget.label for budget in self.budgets]
        if any(not budget.budget > 0 or budget.budget == 1 for budget in self.budgets) or \
                len(set(labels)) < len(labels):
            raise MegadocError(f"data_budgets: budgets {', '.join(labels)} must be distinct, > 0 and not 1 (the "
                               "full split always runs)")

    @property
    def methods_label(self) -> str | None:
        """The label of the methods' budget (None: the full split)."""
        return None if self.methods is None else DataBudget(self.methods).label


@dataclass(frozen=True)
class Variant:
    """A training run beside the pipeline's methods, under a method name of its own (an ablation)."""

    name: str
    """Its method name in the registry (and its run folder)."""
    stream: str | None = None
    """The assemble method of its synthetic stream (None: real data only)."""
    assemble: tuple[str, ...] = ()
    """Flags of its own assembly (none: the base method's stream is reused)."""
    block_cross_document_attention: bool = False
    """Documents attend only to themselves."""
    no_real_data: bool = False
    """Trains on its stream alone (E passes over it, train.real_epochs), no real stream mixed in."""

    @property
    def tokens(self) -> str:
        """The name of the token prefix it trains on."""
        return self.name if self.assemble else self.stream


def ablation_variants(name: str, methods: list[str]) -> list[Variant]:
    """The runs of one ablation preset (PAPER.md §4a, §1): the real document's position in stitched megadocs,
    no real copy in the stream, the order of the rephrases, attention across documents, no real data mixed in."""
    presets = {
        "real-first": [Variant("stitched-real-first", "stitched", ("--real-position", "first"))],
        "no-real-copy": [Variant("stitched-no-real-copy", "stitched", ("--real-position", "none")),
                         Variant("simple-no-real-copy", "simple", ("--real-position", "none"))],
        "random-order": [Variant("stitched-random-order", "stitched", ("--order", "random"))],
        "block-cross-document-attention": [
            Variant(f"{method}-blocked-attention", None if method == REAL_ONLY else method,
                    block_cross_document_attention=True) for method in [REAL_ONLY, *methods]],
        "no-real-data": [Variant("stitched-no-real-data", "stitched", no_real_data=True)],
    }
    if name not in presets:
        raise MegadocError(f"ablations: {name!r} is not one of {', '.join(presets)}")
    return presets[name]


ABLATIONS = ("real-first", "no-real-copy", "random-order", "block-cross-document-attention", "no-real-data")
"""The ablation presets; stitched with the real document last, in generation order, with attention across
documents and real data mixed in is the pipeline's own `stitched` run."""


@dataclass
class PipelineConfig:
    """One run of the whole method over one corpus."""

    name: str
    """Names the jobs."""
    work_dir: str
    """Every output goes under here (relative paths are relative to the YAML's folder)."""
    corpus: list[str]
    """Corpus files or globs (JSONL, Parquet, HF folders)."""
    json_key: str = "text"
    """The record field holding the text (every stage's --json-keys)."""
    tokenizer: TokenizerSpec = field(default_factory=lambda: TokenizerSpec("smollm2"))
    """Tokenizer of every token file (Megatron-LM's tokenizer flags), e.g. {model: path/to/llama3/hf}."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Synthetic streams to build and train on; the real-only baseline always trains."""
    split: SplitStage = field(default_factory=SplitStage)
    generate: GenerateStage = field(default_factory=GenerateStage)
    train: TrainStage = field(default_factory=TrainStage)
    eval: EvalStage = field(default_factory=EvalStage)
    slurm: SlurmStage = field(default_factory=SlurmStage)
    data_budgets: DataBudgets = field(default_factory=DataBudgets)
    """Real-only runs at more real-token budgets, for the real-only data law."""
    seeds: list[int] | None = None
    """Train every run once with each seed (None: train.seed once); the report averages repeats and bootstraps
    data efficiency over them."""
    ablations: list[str] = field(default_factory=list)
    """Ablation presets to run (ABLATIONS), each under method names of its own."""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise MegadocError(f"name: {self.name!r} must be letters, digits, '.', '_' or '-' (it names jobs and files)")
        _check_strings(asdict(self), "")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise MegadocError(f"methods: {', '.join(unknown)} not in {', '.join(METHODS)}")
        for method in self.methods:
            kind = GENERATION_OF[method]
            if self.generate.generations(kind) is None:
                raise MegadocError(f"methods: {method} needs {kind}s, but generate.{kind}s is null")
        positive = {"train.nproc_per_node": self.train.nproc_per_node, "generate.num_shards": self.generate.num_shards,
                    "generate.chunk_docs": self.generate.chunk_docs, "generate.rephrases": self.generate.rephrases or 1,
                    "generate.rationales": self.generate.rationales or 1, "train.global_batch_size":
                    self.train.global_batch_size, "generate.tensor_parallel_size": self.generate.tensor_parallel_size,
                    **({"slurm.max_array_size": self.slurm.max_array_size}
                       if self.slurm.max_array_size is not None else {}),
                    **{f"slurm.{kind}.nodes": getattr(self.slurm, kind).nodes
                       for kind in ("cpu", "generate", "train", "eval")},
                    **{f"slurm.{kind}.{name}": value for kind in ("cpu", "generate", "train", "eval")
                       for name in ("array_limit", "requeue_before_timeout")
                       if (value := getattr(getattr(self.slurm, kind), name)) is not None}}
        for key, value in positive.items():
            if value < 1:
                raise MegadocError(f"{key}: {value} must be >= 1")
        for variant in self.variants:
            if variant.stream and self.generate.generations(GENERATION_OF[variant.stream]) is None:
                raise MegadocError(f"ablations: {variant.name} needs {GENERATION_OF[variant.stream]}s, but "
                                   f"generate.{GENERATION_OF[variant.stream]}s is null")
        for key, seeds in (("seeds", self.seeds), ("data_budgets.seeds", self.data_budgets.seeds)):
            if seeds is not None and (not seeds or len(set(seeds)) < len(seeds)):
                raise MegadocError(f"{key}: {seeds} must be distinct seeds, at least one")
        if "--tensor-parallel-size" in self.generate.engine_args:
            raise MegadocError("generate.engine_args: set generate.tensor_parallel_size instead of "
                               "--tensor-parallel-size (it decides the engines per task)")
        self.generate.engines(self.slurm.generate.gpus_per_node)
        self._check_trainer()

    def _check_trainer(self) -> None:
        """The backend and what it can do; each node's one task must have a CPU for each of its ranks."""
        t = self.train
        if t.backend not in (None, *BACKENDS):
            raise MegadocError(f"train.backend: {t.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.train_backend == "core" and (t.context_parallel_size != 1 or t.sequence_parallel or
                                             t.bridge_overrides):
            raise MegadocError("train.context_parallel_size, sequence_parallel and bridge_overrides need "
                               "train.backend: bridge")
        if self.train_backend == "bridge" and (self.tokenizer.type in MEGATRON_TIKTOKEN_TYPES + LLAMA3_TIKTOKEN_TYPES or
                                               self.tokenizer.model.endswith((".tiktoken", ".bpe"))):
            raise MegadocError("tokenizer: Megatron-Bridge reads HF folders and sentencepiece models, not tiktoken "
                               "files; give the HF folder of the same vocabulary")
        for kind in ("train", "eval"):
            cpus = getattr(self.slurm, kind).cpus_per_task
            if cpus is not None and cpus < t.nproc_per_node:
                raise MegadocError(f"slurm.{kind}.cpus_per_task: {cpus} CPUs for the {t.nproc_per_node} ranks "
                                   f"(train.nproc_per_node) each node runs; give at least {t.nproc_per_node} "
                                   f"(3 per rank with data-loader workers), or leave it unset")

    @property
    def train_backend(self) -> str:
        """The trainer the pipeline runs: train.backend, or bridge when training asks for GPUs, else core."""
        return self.train.backend or ("bridge" if self.slurm.train.gpus_per_node > 0 else "core")

    def cpus_per_task(self, kind: str) -> int:
        """slurm.<kind>.cpus_per_task, or its default: 2, or 3 per rank for training and evaluation."""
        cpus = getattr(self.slurm, kind).cpus_per_task
        if cpus is not None:
            return cpus
        return 3 * self.train.nproc_per_node if kind in ("train", "eval") else 2

    @property
    def variants(self) -> list[Variant]:
        """Every ablation run, in the order the presets are listed."""
        return [variant for name in self.ablations for variant in ablation_variants(name, self.methods)]

    @property
    def seq_length(self) -> int:
        from megadoc.recipes.models import MODELS

        if self.train.recipe not in MODELS:
            raise MegadocError(f"train.recipe: {self.train.recipe!r} is not one of {', '.join(sorted(MODELS))}")
        return self.train.seq_length or MODELS[self.train.recipe].seq_length


# ---------------------------------------------------------------------------------------------------- YAML


def _check_strings(value, where: str) -> None:
    """No control character (a newline above all) in any string: each one ends up in a script or a command line,
    where a newline would start a command of its own."""
    if isinstance(value, str):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise MegadocError(f"{where}: {value!r} holds a control character (newline, tab, ...)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")



def _check_type(value, kind, where: str):
    """A YAML value checked against a field's annotation: a typo'd type fails here, in one line."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any or value is None and (kind is type(None) or type(None) in args):
        return value
    if args and origin is not list:  # X | None
        options = [a for a in args if a is not type(None)]
        return _check_type(value, options[0], where) if len(options) == 1 else value
    if origin is list:
        if not isinstance(value, list):
            raise MegadocError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    if kind is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if kind in (int, float, str, bool) and (not isinstance(value, kind) or kind is int and isinstance(value, bool)):
        raise MegadocError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data, where: str = ""):
    """A dataclass from a YAML mapping; unknown keys and wrong types are errors (a typo must not be ignored)."""
    if not isinstance(data, dict):
        raise MegadocError(f"{where or 'the pipeline'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MegadocError(f"{where + ': ' if where else ''}unknown key(s) {', '.join(unknown)} "
                           f"(known: {', '.join(known)})")
    hints = get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind, key = hints[name], f"{where}.{name}" if where else name
        values[name] = _build(kind, value, key) if is_dataclass(kind) else _check_type(value, kind, key)
    try:
        return cls(**values)
    except TypeError as error:
        raise MegadocError(f"{where or 'the pipeline'}: {error}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Hydra-style `key.sub=value` overrides on a pipeline mapping (values read as YAML: 4, null, [a, b])."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise MegadocError(f"override {override!r}: expected key=value, e.g. train.lr=1e-3")
        parent = data
        for part in key.split(".")[:-1]:
            parent = parent.setdefault(part, {})
            if not isinstance(parent, dict):
                raise MegadocError(f"override {override!r}: {part} is not a section")
        parent[key.split(".")[-1]] = yaml.safe_load(text)
    return data


def load_pipeline(path: str | os.PathLike, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML (plus overrides); relative paths in it are taken from the YAML's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MegadocError(f"{path}: cannot read the pipeline ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MegadocError(f"{path}: a pipeline is a YAML mapping (name, work_dir, corpus, ...)")
    try:
        config = _build(PipelineConfig, apply_overrides(data, list(overrides)))
    except MegadocError as error:
        raise MegadocError(f"{path}: {error}") from None
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
    resources: str = "cpu"
    """Which `slurm:` resources it runs with: cpu, generate, train or eval."""
    after: tuple[str, ...] = ()
    array: int | None = None
    """Array tasks: generation shards; each command then gets its task's --shard-index."""

    @property
    def distributed(self) -> bool:
        """Launched with torchrun over the training world (training and evaluation)."""
        return self.resources in ("train", "eval")


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, and where executors keep their state, under the work directory."""

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

    def checkpoints(self, name: str, backend: str) -> Path:
        """A run's checkpoint folder: the run folder (core), or its checkpoints/ (Bridge's layout)."""
        return self.run(name) / "checkpoints" if backend == "bridge" else self.run(name)

    @staticmethod
    def budget_tokens(label: str) -> str:
        """The token prefix name of a data budget's real documents."""
        return f"budget-{label}"

    def methods_split(self, config: "PipelineConfig") -> Path:
        """The real documents the methods generate from and train on: the split's training set or a budget of it."""
        label = config.data_budgets.methods_label
        return self.split / "train.jsonl" if label is None else self.split / "budgets" / f"{label}.jsonl"

    def methods_tokens(self, config: "PipelineConfig") -> str:
        label = config.data_budgets.methods_label
        return self.tokens("train" if label is None else self.budget_tokens(label))

    @property
    def registry(self) -> str:
        return str(self.root / "runs.csv")

    @property
    def report(self) -> str:
        return str(self.root / "report")

    @property
    def done(self) -> Path:
        """Done markers of every executor: `<step>`, and `<step>.task<i>` for a finished array task."""
        return self.root / ".done"

    @property
    def slurm(self) -> Path:
        """Scripts, logs and job ids of the Slurm executors."""
        return self.root / "slurm"


def _split_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    s = config.split
    tokenizer = tokenizer_flags(config.tokenizer)
    short = (["--short-docs", str(s.short_docs), "--short-max-tokens",
              str(s.short_max_tokens or config.seq_length // 4)] if s.short_docs else [])
    budgets = [budget.label for budget in config.data_budgets.budgets]
    split = Step("split", [["split", "--input", *config.corpus, "--json-keys", config.json_key,
                            "--output-dir", str(paths.split), "--iid-docs", str(s.iid_docs), "--long-docs",
                            str(s.long_docs), "--long-min-tokens", str(s.long_min_tokens or config.seq_length + 1),
                            *short, *(["--budgets", *budgets] if budgets else []), "--seed", str(s.seed),
                            *tokenizer]])
    files = {name: paths.split / f"{name}.jsonl" for name in ("train", "valid_iid", "valid_long")}
    if s.short_docs:
        files["valid_short"] = paths.split / "valid_short.jsonl"
    files.update({paths.budget_tokens(label): paths.split / "budgets" / f"{label}.jsonl" for label in budgets})
    tokenize = [["tokenize", "--input", str(source), "--output-prefix", paths.tokens(name), "--append-eod",
                 "--no-progress", *tokenizer] for name, source in files.items()]
    return [split, Step("tokenize", tokenize, after=("split",))]


def _generate_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    g = config.generate
    steps = []
    for kind in sorted({GENERATION_OF[method] for method, _ in _streams(config).values()}):
        command = ["generate", kind, "--input", str(paths.methods_split(config)), "--json-keys", config.json_key,
                   "--output", paths.generations(kind), "-G", str(g.generations(kind)),
                   "--max-tokens", str(g.max_tokens(kind)), "--num-shards", str(g.num_shards),
                   "--chunk-docs", str(g.chunk_docs), "--exclude-ids", str(paths.split / "validation_ids.txt"),
                   "--seed", str(g.seed), *(["--model", g.model] if g.model else []),
                   "--tensor-parallel-size", str(g.tensor_parallel_size),
                   "--engines", str(g.engines(config.slurm.generate.gpus_per_node)), *map(str, g.engine_args)]
        steps.append(Step(f"generate-{kind}", [command], "generate", after=("split",), array=g.num_shards))
    return steps


def _streams(config: PipelineConfig) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every synthetic stream to assemble: token prefix name -> (assemble method, its extra flags)."""
    streams = {method: (method, ()) for method in config.methods}
    for variant in config.variants:
        if variant.stream:
            streams.setdefault(variant.tokens, (variant.stream, variant.assemble))
    return streams


def _assemble_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    return [Step(f"assemble-{name}",
                 [["assemble", "--method", method, "--input", str(paths.methods_split(config)),
                   "--json-keys", config.json_key, "--generations", paths.generations(GENERATION_OF[method]),
                   "--output-prefix", paths.tokens(name), "--seed", str(config.train.seed), *flags,
                   *tokenizer_flags(config.tokenizer)]],
                 after=(f"generate-{GENERATION_OF[method]}",))
            for name, (method, flags) in _streams(config).items()]


@dataclass(frozen=True)
class Training:
    """One training run of the pipeline (and its evaluation)."""

    key: str
    """Its step names (train-<key>, eval-<key>) and run folder: <method>[-b<budget>][-seed<N>]."""
    method: str
    """Its method name in the registry."""
    seed: int
    budget: DataBudget | None = None
    """The data budget of a real-only law point (None: the full real training split)."""
    variant: Variant | None = None
    """The ablation it runs (None: a method of `methods`, or real only)."""

    @property
    def stream(self) -> str | None:
        """The assemble method of its synthetic stream (None: real data only)."""
        if self.variant is not None:
            return self.variant.stream
        return None if self.method == REAL_ONLY else self.method

    @property
    def tokens(self) -> str:
        """The token prefix name of its synthetic stream."""
        return self.variant.tokens if self.variant is not None else self.method


def trainings(config: PipelineConfig) -> list[Training]:
    """Real only (the full split, then every budget with the data law's seeds), then each method and ablation
    (each seed)."""
    seeds = config.seeds or [config.train.seed]
    real_seeds = config.data_budgets.seeds or seeds

    def repeat(name: str, seeds: list[int], **fields) -> list[Training]:
        return [Training(name if seed == seeds[0] else f"{name}-seed{seed}", seed=seed, **fields) for seed in seeds]

    runs = repeat(REAL_ONLY, seeds, method=REAL_ONLY)
    for budget in config.data_budgets.budgets:
        runs += repeat(f"{REAL_ONLY}-b{budget.label}", real_seeds, method=REAL_ONLY, budget=budget)
    for method in config.methods:
        runs += repeat(method, seeds, method=method)
    for variant in config.variants:
        runs += repeat(variant.name, seeds, method=variant.name, variant=variant)
    return runs


def _run_arguments(config: PipelineConfig, paths: Paths, run: Training) -> dict:
    """What one run trains on and how, as `megadoc train` flag names (without the dashes): the one description
    both trainers' commands are written from."""
    t = config.train
    arguments = {"real_path": paths.tokens("train"), "lr": t.lr, "weight_decay": t.weight_decay,
                 "real_epochs": f"{t.real_epochs:g}", "seed": run.seed, "base_steps": t.base_steps,
                 "block_cross_document_attention": bool(run.variant and run.variant.block_cross_document_attention)}
    if run.stream is None:  # real only: at a budget, an ablation at the methods' budget, or the full split
        budget = run.budget or DataBudget(1.0)
        arguments.update(
            real_path=(paths.tokens(paths.budget_tokens(budget.label)) if run.budget else
                       paths.methods_tokens(config) if run.variant else paths.tokens("train")),
            real_epochs=f"{budget.real_epochs if budget.real_epochs is not None else t.real_only_epochs:g}",
            lr=budget.lr or t.lr,
            weight_decay=next(v for v in (budget.weight_decay, t.real_only_weight_decay, t.weight_decay)
                              if v is not None))
        if run.budget:
            arguments["base_steps"] = None  # a budget is its whole subset, whatever caps the full split
        return arguments
    arguments["generations"] = config.generate.generations(GENERATION_OF[run.stream])
    if run.variant is not None and run.variant.no_real_data:  # E passes over the stream itself
        arguments.update(real_path=paths.tokens(run.tokens), real_tokens_from=paths.methods_tokens(config),
                         base_steps=None)
    else:
        arguments.update(real_path=paths.methods_tokens(config), synthetic_path=paths.tokens(run.tokens),
                         synthetic_fraction=f"{t.synthetic_fraction:g}")
    return arguments


def _train_command(config: PipelineConfig, paths: Paths, run: Training) -> list[str]:
    """`megadoc train` (core) or `megadoc pretrain` (bridge) of one run."""
    if config.train_backend == "bridge":
        return _pretrain_command(config, paths, run)
    t = config.train
    save = str(paths.run(run.key))
    command = ["train", "--recipe", t.recipe, "--seq-length", str(config.seq_length),
               "--global-batch-size", str(t.global_batch_size), "--micro-batch-size", str(t.micro_batch_size),
               "--tensor-model-parallel-size", str(t.tensor_model_parallel_size),
               "--pipeline-model-parallel-size", str(t.pipeline_model_parallel_size),
               "--save", save, "--load", save, *tokenizer_flags(config.tokenizer),
               "--registry", paths.registry, "--method", run.method]
    for key, value in _run_arguments(config, paths, run).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    if t.save_interval:
        command += ["--save-interval", str(t.save_interval)]
    return command


def _pretrain_command(config: PipelineConfig, paths: Paths, run: Training) -> list[str]:
    """`megadoc pretrain`: the same run through Megatron-Bridge (registry flags, the recipe, its arguments)."""
    t = config.train
    run_arguments = _run_arguments(config, paths, run)
    registry = ["--registry", paths.registry, "--method", run.method]
    for flag in ("generations", "real_tokens_from"):
        if run_arguments.get(flag) is not None:
            registry += ["--" + flag.replace("_", "-"), str(run_arguments.pop(flag))]
    synthetic = run_arguments.pop("synthetic_path", None)
    block = run_arguments.pop("block_cross_document_attention")
    arguments = {
        "tokenizer_model": config.tokenizer.model, "tokenizer_type": config.tokenizer.type, **run_arguments,
        "valid_paths": json.dumps([paths.tokens("valid_iid")]),
        "synthetic_paths": None if synthetic is None else json.dumps([synthetic]),
        "global_batch_size": t.global_batch_size, "micro_batch_size": t.micro_batch_size,
        "seq_length": config.seq_length, "tensor_model_parallel_size": t.tensor_model_parallel_size,
        "pipeline_model_parallel_size": t.pipeline_model_parallel_size,
        "context_parallel_size": t.context_parallel_size, "sequence_parallel": str(t.sequence_parallel).lower(),
        "save_interval": t.save_interval, "output_dir": str(paths.run(run.key)),
    }
    overrides = ["dataset.blend.block_cross_document_attention=true"] if block else []
    return ["pretrain", *registry, t.recipe, *(f"{key}={value}" for key, value in arguments.items()
                                               if value is not None), *overrides, *t.bridge_overrides]


def _train_eval_steps(config: PipelineConfig, paths: Paths) -> list[Step]:
    steps = []
    short = ["--short-valid-path", paths.tokens("valid_short")] if config.split.short_docs else []
    for run in trainings(config):
        after = ("tokenize",) if run.stream is None else ("tokenize", f"assemble-{run.tokens}")
        steps.append(Step(f"train-{run.key}", [_train_command(config, paths, run)], "train", after=after))
        evaluate = ["eval", "--load", str(paths.checkpoints(run.key, config.train_backend)), "--valid-path", paths.tokens("valid_iid"),
                    "--long-valid-path", paths.tokens("valid_long"), *short,
                    "--output-dir", str(paths.run(run.key) / "eval"),
                    "--micro-batch-size", str(config.eval.micro_batch_size),
                    "--bucket-size", str(config.eval.bucket_size),
                    "--tensor-model-parallel-size", str(config.train.tensor_model_parallel_size),
                    "--pipeline-model-parallel-size", str(config.train.pipeline_model_parallel_size),
                    "--registry", paths.registry]
        steps.append(Step(f"eval-{run.key}", [evaluate], "eval", after=(f"train-{run.key}",)))
    return steps


def steps(config: PipelineConfig) -> list[Step]:
    """Every step of the pipeline, each after the steps it needs (a topological order)."""
    paths = Paths(Path(config.work_dir))
    evals = tuple(f"eval-{run.key}" for run in trainings(config))
    report = Step("report", [["report", "--registry", paths.registry, "--output-dir", paths.report]], after=evals)
    return [*_split_steps(config, paths), *_generate_steps(config, paths), *_assemble_steps(config, paths),
            *_train_eval_steps(config, paths), report]
