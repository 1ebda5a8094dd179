"""The runs registry: one CSV row per launched run, with its plan, recipe and evaluation results.

`megadoc efficiency` and `megadoc report` read it; a launcher calls `record_run` when a run starts and again when
its evaluation lands (rows are keyed by run name, so the second call updates the first). CSV rather than Parquet so
a person can read and fix it by hand; it is small (one row per run). Rewrites go through a temp file and a rename.
"""

import contextlib
import csv
import fcntl
import io
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from megadoc.files import atomic_write
from megadoc.errors import MegadocError

REAL_ONLY = "real"
DEFAULT_SEED = 1234
"""The seed runs are named without (the paper's names carry none for its default seed)."""


@dataclass(frozen=True)
class RunRecord:
    """One run: what it trained on, with which hyperparameters, and what it scored."""

    run: str
    """Unique run name (the registry key)."""
    method: str
    """Synthetic stream kind: `real` (real-only baseline), `simple`, `stitched`, `stretched`, ..."""
    generations: int
    """G: synthetic generations per real document (0 for real-only)."""
    real_tokens: int
    """D: unique real training tokens; the x axis of the real-only data-scaling law."""
    real_epochs: float
    """E: epochs over the real stream."""
    synthetic_fraction: float | None
    """r: fraction of training sequences from the synthetic streams (empty for real-only)."""
    lr: float
    """Peak learning rate."""
    weight_decay: float
    """Weight decay."""
    params: int | None = None
    """Model parameter count N: the x axis of the loss-vs-N asymptote fits."""
    seq_length: int | None = None
    """Training context length."""
    checkpoint: str = ""
    """The run's checkpoint folder (--save), which holds its megadoc_recipe.json (recipe, blend and plan)."""
    recipe: str = ""
    """Model recipe name or path."""
    iid_loss: float | None = None
    """Token-weighted mean cross-entropy on the i.i.d. validation set."""
    long_loss: float | None = None
    """Mean cross-entropy on the long-document validation set."""
    short_loss: float | None = None
    """Mean cross-entropy on short validation documents."""
    loss_by_position: str = ""
    """Path of the loss-by-position JSON (`megadoc.evaluation.metrics.save_curve`), relative to the registry's folder."""
    seed: int | None = None
    """Training seed (model init, data order): runs that differ only in it are one configuration's repeats."""
    members: int = 1
    """K: models whose logits an evaluation averaged (an ensemble row, `megadoc eval --load A B ...`); 1: one run."""

    def configuration(self) -> tuple:
        """What the run trained, all but its seed: runs with equal configurations are repeats of one experiment."""
        return (self.method, self.generations, self.real_tokens, self.real_epochs, self.synthetic_fraction, self.lr,
                self.weight_decay, self.params, self.seq_length, self.recipe)


COLUMNS = [field.name for field in fields(RunRecord)]
_TYPES = {field.name: field.type for field in fields(RunRecord)}
_DEFAULTS = {"members": 1}


def _parse(name: str, text: str, where: str):
    kind = _TYPES[name]
    if kind is str:
        return text
    if text == "":
        if name in _DEFAULTS:  # a column added after the registry was written
            return _DEFAULTS[name]
        if kind in (int, float):
            raise MegadocError(f"{where}: column {name!r} is empty")
        return None
    integer = kind in (int, int | None)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or (integer and not value.is_integer()):
        raise MegadocError(f"{where}: column {name!r} is {text!r}, not {'an integer' if integer else 'a number'}")
    return int(value) if integer else value


def read_registry(path: str | os.PathLike) -> list[RunRecord]:
    """Every run of a registry CSV, checked column by column."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise MegadocError(f"{path}: cannot read the registry ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise MegadocError(f"{path}: not a registry CSV (invalid UTF-8 at byte {error.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    runs = []
    try:
        missing = [name for name in COLUMNS[:8] if name not in (reader.fieldnames or [])]
        if missing:
            raise MegadocError(f"{path}: registry lacks column(s) {', '.join(missing)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # more cells than the header names: a row shifted by a stray comma
                raise MegadocError(f"{where}: {len(reader.fieldnames) + len(row[None])} cells, the header names "
                                   f"{len(reader.fieldnames)}; fix the row (a comma inside a value needs quotes)")
            values = {name: _parse(name, (row.get(name) or "").strip(), where) for name in COLUMNS}
            runs.append(RunRecord(**values))
    except csv.Error as error:
        raise MegadocError(f"{path}:{reader.line_num}: not a registry CSV ({error})") from None
    return runs


def _format(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def write_registry(path: str | os.PathLike, runs: list[RunRecord]) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for run in runs:
            writer.writerow([_format(getattr(run, name)) for name in COLUMNS])


@contextlib.contextmanager
def _locked(path: str | os.PathLike):
    """Hold `<path>.lock` exclusively: one pipeline's training and evaluation jobs run at once (e.g. under Slurm) and
    each rewrites the registry; without the lock two writers share the temp file and one run's row is lost."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_run(path: str | os.PathLike, run: RunRecord) -> None:
    """Add `run` (at launch), or replace the row of the same name."""
    with _locked(path):
        runs = [existing for existing in _read_if_any(path) if existing.run != run.run]
        write_registry(path, runs + [run])


def update_run(path: str | os.PathLike, name: str, **results) -> RunRecord:
    """Set fields (e.g. iid_loss=..., loss_by_position=...) of a recorded run, once its evaluation lands."""
    with _locked(path):
        runs = _read_if_any(path)
        index = next((i for i, run in enumerate(runs) if run.run == name), None)
        if index is None:
            raise MegadocError(f"{path}: no run named {name!r} in the registry")
        runs[index] = replace(runs[index], **results)
        write_registry(path, runs)
    return runs[index]


def run_record(run, method: str | None, generations: int, name: str | None, checkpoint: str | None,
               real_tokens_from: str | None = None) -> RunRecord:
    """A run's registry row from its run config (`training.checkpoints.RunConfig`, so from the plan actually
    trained), for either trainer; named by the paper's pattern (megadoc.recipes.sweep, with -seed<N> unless the seed
    is the default) unless `name` is given. `real_tokens_from`: the real prefix a synthetic-only run's documents
    came from (its D)."""
    from megadoc.recipes.sweep import run_name
    from megadoc_data.sources import read_source

    recipe, plan = run.recipe, run.plan
    if plan is not None:
        # D, the x axis of the real-only law: the real tokens one pass reads (the paper's 777 x 64 x 4096).
        real_tokens = plan["base_steps"] * plan["global_batch_size"] * plan["seq_length"]
        epochs, fraction = plan["real_epochs"], plan["synthetic_fraction"] or None
    else:
        real_tokens, epochs, fraction = read_source(run.data_path).tokens, 1.0, None
    if real_tokens_from:  # all of it synthetic (r = 1): D is one pass over the real documents it came from
        length, batch = recipe.model.seq_length, recipe.global_batch_size
        real_tokens = read_source(real_tokens_from).samples_per_pass(length) // batch * batch * length
        fraction = 1.0
    method = method or ("synthetic" if fraction else REAL_ONLY)
    stream = None if fraction is None else f"{method}{generations}"
    name = name or run_name(recipe.model.run_prefix, real_tokens, epochs, recipe.optimizer.lr,
                            recipe.optimizer.weight_decay, recipe.global_batch_size, stream, fraction or 0.0,
                            seed=None if run.seed == DEFAULT_SEED else run.seed)
    return RunRecord(
        run=name, method=method, generations=generations, real_tokens=real_tokens, real_epochs=epochs,
        synthetic_fraction=fraction, lr=recipe.optimizer.lr, weight_decay=recipe.optimizer.weight_decay,
        params=recipe.model.parameter_count(recipe.vocab_size), seq_length=recipe.model.seq_length,
        recipe=recipe.model.name, checkpoint=str(Path(checkpoint).resolve()) if checkpoint else "", seed=run.seed)


def _read_if_any(path: str | os.PathLike) -> list[RunRecord]:
    return read_registry(path) if Path(path).exists() else []
