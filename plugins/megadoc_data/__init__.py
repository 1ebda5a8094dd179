"""megadoc_data: the blended-dataset plugin (mixing and epoching real and synthetic streams on Megatron-Core)."""
