"""Corpus readers: shares (sharded reads) cover every record exactly once and read about 1/K of the bytes each; a
damaged file is one clear line, never a shorter corpus; a BOM is accepted."""

import gzip
import io
import json
import os
from collections import Counter

import pytest
import zstandard

from megadoc.cli import main as cli_main
from megadoc.preprocess.corpus import count_records, iter_documents, iter_records


@pytest.fixture(scope="module")
def lines(dclm_sample):
    return dclm_sample.read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory, lines):
    """The DCLM sample in every format, one corpus: plain, .gz, .zst, Parquet (row groups of 20), an HF folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("formats")
    records = [json.loads(line) for line in lines]
    (folder / "a.jsonl").write_bytes(b"".join(lines[:80]))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[80:110])))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines[110:140])))
    pq.write_table(pa.Table.from_pylist(records[140:200]), folder / "d.parquet", row_group_size=20)
    datasets.Dataset.from_list(records[200:]).save_to_disk(str(folder / "e"))
    return [str(folder / name) for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet", "e")]


@pytest.mark.parametrize("shares", [1, 2, 3, 7, 40])
def test_shares_hold_every_record_once_in_order(corpus_files, lines, shares):
    whole = [doc.id for doc in iter_documents(corpus_files)]
    assert whole == [json.loads(line)["id"] for line in lines]
    split = [doc.id for share in range(shares) for doc in iter_documents(corpus_files, share=(share, shares))]
    assert split == whole


def test_each_share_reads_its_part_of_the_bytes(tmp_path, dclm_sample, lines):
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = dclm_sample.stat().st_size
    reads = []
    for share in range(4):
        stats = Counter()
        assert sum(1 for _ in iter_records([str(dclm_sample)], (share, 4), stats)) > 0
        reads.append(stats["bytes_read"])
    # Each share reads its quarter plus the end of its last line (the longest document is 48 KB).
    assert sum(reads) <= 1.1 * size and max(reads) <= size / 4 + 64 * 1024, reads
    # Parquet: each share reads its row groups, and the footer (pyarrow reads its last 64 KB).
    records = [{**json.loads(line), "id": f"{k}-{i}"} for k in range(4) for i, line in enumerate(lines)]
    parquet = str(tmp_path / "sample.parquet")
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=50)
    reads = []
    for share in range(3):
        stats = Counter()
        assert sum(1 for _ in iter_records([parquet], (share, 3), stats)) > 0
        reads.append(stats["bytes_read"])
    assert sum(reads) <= 1.25 * os.path.getsize(parquet) and max(reads) < 0.5 * os.path.getsize(parquet), reads


def test_count_records(corpus_files, lines):
    assert count_records(corpus_files) == (len(lines), True)
    estimated, exact = count_records(corpus_files[:1] * 3, scan_bytes=100_000)
    assert not exact and 0.5 * 240 < estimated < 1.5 * 240


def _zst_cut_at_block(lines, keep: int) -> bytes:
    """A single-frame .zst cut right after the block that ends with line `keep` (a cut at a block boundary)."""
    buffer = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buffer, closefd=False)
    writer.write(b"".join(lines[:keep]))
    writer.flush(zstandard.FLUSH_BLOCK)
    cut = buffer.tell()
    writer.write(b"".join(lines[keep:]))
    writer.flush(zstandard.FLUSH_FRAME)
    return buffer.getvalue()[:cut]


def _corrupt_parquet(lines) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in lines]), buffer, row_group_size=50)
    data = bytearray(buffer.getvalue())
    middle = len(data) // 2
    data[middle:middle + 4000] = bytes(4000)
    return bytes(data)


BAD = {
    "half.jsonl.zst": (lambda lines: (z := zstandard.ZstdCompressor().compress(b"".join(lines)))[:len(z) // 2],
                       "truncated zstd file"),
    "cut.jsonl.zst": (lambda lines: _zst_cut_at_block(lines, 100), "truncated zstd file"),
    "notzstd.jsonl.zst": (lambda lines: b"".join(lines[:5]), "not a readable zstd file"),
    "half.jsonl.gz": (lambda lines: (g := gzip.compress(b"".join(lines)))[:len(g) // 2], "truncated or corrupt"),
    "corrupt.parquet": (_corrupt_parquet, "corrupt Parquet"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_damaged_files_are_one_line_and_leave_nothing(tmp_path, lines, llama3_hf, capsys, name):
    make, words = BAD[name]
    (tmp_path / name).write_bytes(make(lines))
    out = tmp_path / "out"
    code = cli_main(["tokenize", "--input", str(tmp_path / name), "--output-prefix", str(out / "x"),
                     "--tokenizer-model", str(llama3_hf), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / name}" in err and words in err, err
    assert not list(out.glob("*")) if out.exists() else True  # no partial output, no *.tmp


def test_a_bom_is_accepted(tmp_path, lines):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(lines[:3]))
    assert [doc.id for doc in iter_documents([str(path)])] == [json.loads(line)["id"] for line in lines[:3]]
