"""`megadoc demo`: the whole method on a small real corpus, on CPU, offline, in minutes.

The demo is a pipeline file plus a corpus. The corpus is one the project did not write: the Lee news corpus that
gensim ships (`lee_background.cor`, 300 Australian news articles, one per line); the demo writes its first `--docs`
articles as JSONL. The pipeline is `pipelines/demo.yaml` (validation documents held out first, SmolLM2-135M-Instruct
rephrases and rationales with vLLM, the simple / stitched / stretched streams, the tiny model trained with
Megatron-Core on CPU per method plus real-only at four data budgets (the smaller three twice), each evaluated, a
report with the real-only data law and every method's data efficiency), copied to `<output-dir>/pipeline.yaml`
with any KEY=VALUE overrides and run here (`megadoc run`); `megadoc submit` takes that same file to a Slurm
cluster. Re-running the demo skips the finished steps and resumes the one that was interrupted.
"""

import argparse
import json
import time
from pathlib import Path

import yaml

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.launch.local import run_local
from megadoc.launch.pipeline import apply_overrides, load_pipeline

DEMO_PIPELINE = Path(__file__).parent / "pipelines" / "demo.yaml"
LEE_CORPUS = "test/test_data/lee_background.cor"
"""Path of the Lee corpus inside the gensim package."""
CORPUS = "corpus/lee.jsonl"
"""Where the demo pipeline expects its corpus, relative to the output directory."""


def lee_corpus_path() -> Path:
    try:
        import gensim
    except ImportError:
        raise MegadocError("the demo's corpus comes with gensim: pip install gensim (install.sh does)") from None
    path = Path(gensim.__file__).parent / LEE_CORPUS
    if not path.exists():
        raise MegadocError(f"{path}: the Lee corpus is missing from this gensim install")
    return path


def write_corpus(path: Path, docs: int) -> int:
    """The first `docs` Lee articles as JSONL records {id, text}; returns how many were written."""
    articles = [line.strip() for line in lee_corpus_path().read_text(encoding="latin-1").splitlines()]
    articles = [text for text in articles if text][:docs]
    if len(articles) < docs:
        raise MegadocError(f"--docs {docs}: the Lee corpus has only {len(articles)} articles")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        for i, text in enumerate(articles):
            handle.write(json.dumps({"id": f"lee-{i:03d}", "text": text}) + "\n")
    return len(articles)


def write_pipeline(out: Path, overrides: list[str]) -> Path:
    """<out>/pipeline.yaml: the demo pipeline with the overrides; refused when an earlier demo there differs."""
    text = yaml.safe_dump(apply_overrides(yaml.safe_load(DEMO_PIPELINE.read_text()), overrides), sort_keys=False)
    path = out / "pipeline.yaml"
    if path.exists() and path.read_text() != text:
        raise MegadocError(f"{path}: made with other settings; use another --output-dir or delete it")
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of pipelines/demo.yaml, e.g. generate.rephrases=2 train.seq_length=64")
    parser.add_argument("--output-dir", default="demo-out", help="everything goes here (default demo-out)")
    parser.add_argument("--docs", type=int, default=104, help="Lee articles to use (of 300, default 104)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_path = write_pipeline(out, args.overrides)
    pipeline = load_pipeline(pipeline_path)
    held_out = pipeline.split.iid_docs + pipeline.split.long_docs
    if args.docs <= held_out:
        raise MegadocError(f"--docs {args.docs} leaves no training document after {held_out} validation documents")
    corpus = out / CORPUS
    if not corpus.exists():
        print(f"megadoc demo: {write_corpus(corpus, args.docs)} Lee news articles -> {corpus}")
    elif sum(1 for _ in corpus.open()) != args.docs:
        raise MegadocError(f"{corpus}: made with another --docs; use another --output-dir or delete it")
    run_local(pipeline, log=lambda line: print(f"megadoc demo: {line}", flush=True))
    report = Path(pipeline.work_dir) / "report" / "report.md"
    print(report.read_text())
    print(f"megadoc demo: finished in {time.perf_counter() - start:.0f} s; report: {report} "
          f"(same pipeline on Slurm: megadoc submit {pipeline_path})")
    return 0
