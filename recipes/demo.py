"""`megadoc demo`: the whole method on a small real corpus, on CPU, offline, in minutes.

The corpus is one the project did not write: the Lee news corpus that gensim ships (`lee_background.cor`, 300
Australian news articles, one per line). The demo takes its first `--docs` articles, writes them as JSONL, and runs
the pipeline (`megadoc_recipes.pipeline`) here: validation documents held out first, SmolLM2-135M-Instruct rephrases
(G = 4) and rationales (G = 2) with vLLM, the simple / stitched / stretched streams assembled and tokenized, a blend
per method, the tiny model trained with Megatron-Core on CPU per method plus real-only, each evaluated (i.i.d. loss,
loss by position) and a report (Markdown + PNG) written.

The pipeline it runs is written to `<output-dir>/pipeline.yaml`: `megadoc submit` takes that same file to a Slurm
cluster. Re-running the demo skips the finished steps and resumes the one that was interrupted.

Sizes are chosen for 2 CPU cores (about 10 minutes), not for research: 12k real tokens and a 3M-parameter model
make the report show the method's mechanics, not the paper's numbers.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError
from megadoc_recipes.pipeline import (EvalStage, GenerateStage, PipelineConfig, SplitStage, TrainStage,
                                      dump_pipeline, load_pipeline, run_local)

LEE_CORPUS = "test/test_data/lee_background.cor"
"""Path of the Lee corpus inside the gensim package."""


@dataclass(frozen=True)
class DemoConfig:
    """The demo's sizes; the defaults run in about 10 minutes on 2 cores."""

    output_dir: str
    docs: int = 64
    """Lee articles used (of 300): validation documents come out of these, the rest are the real training data."""
    iid_docs: int = 10
    """Held-out articles for the i.i.d. loss."""
    long_docs: int = 6
    """Held-out articles of at least seq_length + 1 tokens, for loss by position."""
    rephrases: int = 4
    rationales: int = 2
    rephrase_max_tokens: int = 160
    rationale_max_tokens: int = 96
    seq_length: int = 128
    global_batch_size: int = 8
    model: str | None = None
    """Generator model directory (None: the embedded SmolLM2-135M-Instruct)."""


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
    with atomic_write(path, "w") as handle:
        for i, text in enumerate(articles):
            handle.write(json.dumps({"id": f"lee-{i:03d}", "text": text}) + "\n")
    return len(articles)


def demo_pipeline(config: DemoConfig, corpus: Path) -> PipelineConfig:
    """The pipeline the demo runs: the paper's method at laptop scale (tiny model, short context)."""
    return PipelineConfig(
        name="demo", work_dir=str(Path(config.output_dir).resolve() / "work"), corpus=[str(corpus.resolve())],
        tokenizer_model="smollm2",
        split=SplitStage(iid_docs=config.iid_docs, long_docs=config.long_docs),
        generate=GenerateStage(rephrases=config.rephrases, rationales=config.rationales,
                               rephrase_max_tokens=config.rephrase_max_tokens,
                               rationale_max_tokens=config.rationale_max_tokens, num_shards=1, chunk_docs=16,
                               model=config.model),
        # The paper's grid values where they carry over (r = 0.75, lr 3e-3, real-only E 16 / wd 1.6); fewer real
        # epochs for the synthetic runs so the four runs stay short.
        train=TrainStage(recipe="tiny", seq_length=config.seq_length, global_batch_size=config.global_batch_size,
                         micro_batch_size=config.global_batch_size, lr=3e-3, weight_decay=0.8, real_epochs=4,
                         synthetic_fraction=0.75, real_only_epochs=16, real_only_weight_decay=1.6),
        eval=EvalStage(micro_batch_size=8, bucket_size=16),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo-out", help="everything goes here (default demo-out)")
    parser.add_argument("--docs", type=int, default=DemoConfig.docs, help="Lee articles to use (of 300)")
    parser.add_argument("--iid-docs", type=int, default=DemoConfig.iid_docs)
    parser.add_argument("--long-docs", type=int, default=DemoConfig.long_docs)
    parser.add_argument("--rephrases", type=int, default=DemoConfig.rephrases, help="G of the rephrase streams")
    parser.add_argument("--rationales", type=int, default=DemoConfig.rationales, help="G of the stretched stream")
    parser.add_argument("--rephrase-max-tokens", type=int, default=DemoConfig.rephrase_max_tokens)
    parser.add_argument("--rationale-max-tokens", type=int, default=DemoConfig.rationale_max_tokens)
    parser.add_argument("--seq-length", type=int, default=DemoConfig.seq_length)
    parser.add_argument("--global-batch-size", type=int, default=DemoConfig.global_batch_size)
    parser.add_argument("--model", default=None, help="generator model directory (default: embedded SmolLM2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(output_dir=args.output_dir, docs=args.docs, iid_docs=args.iid_docs,
                        long_docs=args.long_docs, rephrases=args.rephrases, rationales=args.rationales,
                        rephrase_max_tokens=args.rephrase_max_tokens, rationale_max_tokens=args.rationale_max_tokens,
                        seq_length=args.seq_length, global_batch_size=args.global_batch_size, model=args.model)
    if config.docs <= config.iid_docs + config.long_docs:
        raise MegadocError(f"--docs {config.docs} leaves no training document after {config.iid_docs} i.i.d. and "
                           f"{config.long_docs} long validation documents")
    start = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus" / "lee.jsonl"
    corpus.parent.mkdir(exist_ok=True)
    if not corpus.exists():
        print(f"megadoc demo: {write_corpus(corpus, config.docs)} Lee news articles -> {corpus}")
    pipeline_path = out / "pipeline.yaml"
    pipeline = demo_pipeline(config, corpus)
    if pipeline_path.exists() and load_pipeline(pipeline_path) != pipeline:
        raise MegadocError(f"{pipeline_path}: made with other settings; use another --output-dir or delete it")
    dump_pipeline(pipeline, pipeline_path)
    run_local(pipeline, log=lambda line: print(f"megadoc demo: {line}", flush=True))
    report = Path(pipeline.work_dir) / "report" / "report.md"
    print(report.read_text())
    print(f"megadoc demo: finished in {time.perf_counter() - start:.0f} s; report: {report} "
          f"(same pipeline on Slurm: megadoc submit {pipeline_path})")
    return 0
