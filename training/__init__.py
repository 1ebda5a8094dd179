"""megadoc.training: the Megatron-Core training path (CPU here, GPU on clusters), split by job:

`runtime` (distributed init, model, device placement; `device_shim` on CPU-only machines), `checkpoints`
(torch_dist saves, the tracker, the run record beside them), `loop` (optimizer, schedule, data order, steps),
`registry` (one CSV row per run), and `cli` (`megadoc train`, which ties them to the data plan).
`megadoc.evaluation` reuses runtime and checkpoints without touching the loop.
"""
