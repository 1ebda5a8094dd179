"""The runs registry under concurrent writers: a pipeline's training and evaluation jobs record runs at once."""

import multiprocessing

from megadoc.training.registry import RunRecord, read_registry, record_run, update_run


def _record(path: str, worker: int) -> None:
    for i in range(10):
        name = f"w{worker}-r{i}"
        record_run(path, RunRecord(run=name, method="real", generations=0, real_tokens=1000, real_epochs=1.0,
                                   synthetic_fraction=None, lr=3e-3, weight_decay=0.8))
        update_run(path, name, iid_loss=float(worker * 100 + i))


def test_concurrent_writers_lose_no_row(tmp_path):
    path = str(tmp_path / "runs.csv")
    workers = [multiprocessing.get_context("fork").Process(target=_record, args=(path, w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    runs = {run.run: run for run in read_registry(path)}
    assert sorted(runs) == sorted(f"w{w}-r{i}" for w in range(6) for i in range(10))
    assert all(run.iid_loss == float(int(name[1]) * 100 + int(name.split("-r")[1])) for name, run in runs.items())
