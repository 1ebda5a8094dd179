"""megadoc.preprocess: corpus -> generations -> megadocs -> tokens (the corpus-conversion tools).

`corpus` reads every input format, `tokenizer` builds Megatron-LM's tokenizers from one spec, `split` holds out
validation documents, `generate` writes rephrases and rationales with vLLM, `assemble` builds the simple / stitched
/ stretched streams, `tokenize` writes Megatron indexed datasets (`indexed` is that format), `inspect` reads them.
"""
