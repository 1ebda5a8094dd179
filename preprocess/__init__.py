"""megadoc: the preprocess stages (corpus -> generations -> megadocs -> tokens) and the `megadoc` CLI."""

__version__ = "0.1.0"
