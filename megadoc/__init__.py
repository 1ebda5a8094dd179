"""megadoc: synthetic megadocs for data-efficient pre-training (Kim, Kotha et al., 2026) on Megatron/NeMo.

This folder holds what every stage shares: the `megadoc` CLI (`cli`), the one error type (`errors`) and safe file
writes (`files`). The stages live in the top-level folders named by their import path: `megadoc.preprocess` is
`preprocess/`, `megadoc.training` is `training/`, and so on (README, "Layout").
"""

__version__ = "0.1.0"
