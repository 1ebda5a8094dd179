"""megadoc.training: training, split by job. The Megatron-Core path (CPU here and laptops, GPU too):

`runtime` (distributed init, model, device placement; `device_shim` on CPU-only machines), `checkpoints`
(torch_dist saves, the tracker, the run record beside them, `load_model` for either trainer's checkpoints), `loop`
(optimizer, schedule, data order, steps), `registry` (one CSV row per run), and `cli` (`megadoc train`, which ties
them to the data plan). The Megatron-Bridge path (NeMo, GPU clusters): `bridge` (`megadoc pretrain`: Bridge's own
pretrain with a megadoc recipe, writing the same run record, loss log and registry row). `export` (`megadoc export`)
turns a checkpoint of either into a Hugging Face model. `megadoc.evaluation` reuses runtime and checkpoints without
touching either trainer.
"""
