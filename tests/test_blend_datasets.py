"""The blend on real Megatron-Core: exact counts from the dataset index, windows of a megadoc, entry points."""

import json
import types

import numpy
import pytest

from megadoc.cli import main
from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import TokenizerSpec, build_tokenizer
from megadoc_data.config import MegadocBlendConfig
from megadoc_data.bridge import MegadocDatasetProvider
from megadoc_data.datasets import build_datasets
from test_blend import write_dataset

L, GBS = 64, 4


@pytest.fixture(scope="module")
def tokenizer(llama3_hf):
    return build_tokenizer(TokenizerSpec(str(llama3_hf)))


@pytest.fixture
def world_of_one():
    """The process group a trainer would have: Megatron-Core caches indices per rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.fixture
def blend(tmp_path, world_of_one):
    """Real (184 samples per pass at 64 x 4), two synthetic streams; int32 tokens like Llama 3's."""
    real = write_dataset(tmp_path / "real", [300] * 40, dtype=numpy.int32, seed=1)
    syn = write_dataset(tmp_path / "syn", [500] * 60, dtype=numpy.int32, seed=2)
    syn2 = write_dataset(tmp_path / "syn2", [200] * 50, dtype=numpy.int32, seed=3)
    valid = write_dataset(tmp_path / "valid", [100] * 20, dtype=numpy.int32, seed=4)
    return MegadocBlendConfig(real_prefix=real, synthetic_prefixes=[syn, syn2], synthetic_weights=[0.7, 0.3],
                              real_epochs=4, synthetic_fraction=0.75, seq_length=L, global_batch_size=GBS,
                              valid_prefixes=[valid], path_to_cache=str(tmp_path / "cache"))


def test_dataset_index_counts_are_exact(blend, tokenizer):
    train, valid, test = build_datasets(blend, tokenizer)
    steps = 46 * 4 * 4  # floor(base 46 x E 4 / (1 - 0.75))
    assert len(train) == steps * GBS and test is None and len(valid) > 0
    counts = numpy.bincount(train.dataset_index, minlength=3)
    real_pass = 46 * GBS
    assert counts[0] == 4 * real_pass  # exactly E passes of the real stream
    assert counts[1] + counts[2] == 3 * counts[0] == 0.75 * len(train)  # the fraction r, to the sequence
    assert counts[1] == round(0.7 * counts[1:].sum())
    real_ids = train.datasets[0].order[train.dataset_sample_index[train.dataset_index == 0]]
    assert (numpy.bincount(real_ids, minlength=real_pass) == 4).all()  # every real sample seen exactly E times
    for i in (0, 1, len(train) - 1):
        assert train[i]["tokens"].shape == (L,)
    assert any(name.endswith("dataset_index.npy") for name in __import__("os").listdir(blend.path_to_cache))


def test_a_real_stream_in_pieces_is_seen_exactly_e_times(blend, tokenizer, tmp_path):
    """Two real prefixes are one stream: each piece gets its share of every pass and each of its samples is
    drawn exactly E times; the fraction r is that of the whole."""
    from megadoc_data.datasets import check_plan

    blend.real_prefix = [blend.real_prefix, write_dataset(tmp_path / "real2", [300] * 20, dtype=numpy.int32, seed=6)]
    plan = check_plan(blend, tokenizer)
    train, _, _ = build_datasets(blend, tokenizer)
    counts = numpy.bincount(train.dataset_index, minlength=4)
    assert [p.pass_sequences for p in plan.real_parts] == [187, 93]  # 70 batches of 4: every sample of both
    for i, part in enumerate(plan.real_parts):
        assert counts[i] == part.sequences == 4 * part.pass_sequences
        drawn = train.datasets[i].order[train.dataset_sample_index[train.dataset_index == i]]
        assert (numpy.bincount(drawn, minlength=part.pass_sequences) == 4).all()
    assert counts[2] + counts[3] == 3 * (counts[0] + counts[1]) == 0.75 * len(train)


def test_the_index_cache_needs_the_callers_world(blend, tokenizer):
    """Building never starts a process group behind the caller's back."""
    import torch.distributed as dist

    dist.destroy_process_group()
    with pytest.raises(MegadocError, match="initialise torch.distributed first"):
        build_datasets(blend, tokenizer)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_same_seed_same_batches(blend, tokenizer, tmp_path):
    first, _, _ = build_datasets(blend, tokenizer)
    blend.path_to_cache = str(tmp_path / "other-cache")
    second, _, _ = build_datasets(blend, tokenizer)
    assert (first.dataset_index == second.dataset_index).all()
    for i in (0, 17, 1000):
        assert (first[i]["tokens"] == second[i]["tokens"]).all()


def test_stitched_megadoc_is_one_sequence_covered_in_order(tmp_path, dclm_sample, llama3_hf, tokenizer):
    texts = [json.loads(line)["text"] for line in dclm_sample.read_text().splitlines()[:8]]
    corpus = tmp_path / "stitched.jsonl"
    records = [{"text": t} for t in texts[:4]] + [{"parts": texts[4:]}]
    corpus.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prefix = tmp_path / "stitched"
    assert main(["tokenize", "--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer-model",
                 str(llama3_hf), "--append-eod", "--workers", "1", "--no-progress"]) == 0
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split
    from megadoc_data.datasets import MegadocGPTDataset, gpt_config

    indexed = IndexedDataset(str(prefix))
    assert len(indexed) == 5
    megadoc = indexed[4]
    expected = numpy.concatenate([ids + [tokenizer.eod] for ids in tokenizer.encode_batch(texts[4:])])
    assert (megadoc == expected).all()  # each part keeps its own EOD, one sequence
    config = MegadocBlendConfig(real_prefix=str(prefix), seq_length=L, global_batch_size=1)
    dataset = MegadocGPTDataset(indexed, str(prefix), numpy.arange(5, dtype=numpy.int32), None, Split.train,
                                gpt_config(config, tokenizer))
    unshuffle = numpy.argsort(dataset.shuffle_index)
    windows = [dataset[int(p)]["tokens"].numpy() for p in unshuffle]
    labels_last = [dataset[int(p)]["labels"].numpy()[-1] for p in unshuffle]
    stream = numpy.concatenate([w for w in windows] + [numpy.asarray(labels_last[-1:])])
    start = next(i for i in range(len(stream) - 8) if (stream[i:i + 8] == megadoc[:8]).all())
    covered = stream[start:start + len(megadoc)]
    assert (covered == megadoc[:len(covered)]).all() and len(covered) >= len(megadoc) - L


def test_entry_points_build_the_same_blend(blend, tokenizer):
    """The plain and the Megatron-Bridge entry points; the Megatron-LM one runs under Megatron-LM's own argument
    parser in tests/bridge (megatron.training ships with megatron-core 0.19, in .venv312)."""
    plain, _, _ = build_datasets(blend, tokenizer)
    context = types.SimpleNamespace(train_samples=len(plain), valid_samples=8, test_samples=0, tokenizer=tokenizer)
    bridged, valid, _ = MegadocDatasetProvider(blend=blend).build_datasets(context)
    assert (bridged.dataset_index == plain.dataset_index).all() and len(valid) >= 8


def test_vocabulary_mismatch_fails_before_building(blend, tokenizer, tmp_path):
    blend.synthetic_prefixes = [write_dataset(tmp_path / "small_vocab", [300] * 10, dtype=numpy.int32)]
    blend.synthetic_weights = [1.0]
    small = types.SimpleNamespace(vocab_size=32000, eod=2, unique_identifiers={"class": "small"})
    with pytest.raises(MegadocError, match="does not match the tokenizer's vocabulary of 32000"):
        build_datasets(blend, small)
    assert not (tmp_path / "cache").exists()


class _Vocab:
    """A picklable tokenizer stand-in with Llama 3's vocabulary size."""

    vocab_size, eod = 128_256, 128_001
    unique_identifiers = {"class": "test", "vocab": 128_256}


def _rank_builds(rank: int, store: str, config: MegadocBlendConfig, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    train, _, _ = build_datasets(config, _Vocab())
    numpy.save(f"{out}-{rank}.npy", numpy.asarray(train.dataset_index))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_build_at_once_into_one_cache(blend, tmp_path):
    import torch.multiprocessing

    torch.multiprocessing.spawn(_rank_builds, args=(str(tmp_path / "store"), blend, str(tmp_path / "index")),
                                nprocs=2)
    first, second = (numpy.load(tmp_path / f"index-{rank}.npy") for rank in (0, 1))
    assert (first == second).all() and numpy.bincount(first)[0] == 4 * 46 * GBS
    assert len([name for name in __import__("os").listdir(blend.path_to_cache)
                if name.endswith("BlendedDataset-train-dataset_index.npy")]) == 1
