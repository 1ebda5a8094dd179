"""megadoc.preprocess.generate: rephrases and rationales of every real document with vLLM, sharded and resumable.

By job: `prompts` (templates), `engine` (the vLLM engine and its flags; `embedded_model` is the offline default
model), `requests` (fitting prompts to the context, rationale split points via `postprocess`), `shards` (the shard
format: Parquet schema, manifest, status, readers), `run` (the chunk loop of one shard) and `cli`.
"""
