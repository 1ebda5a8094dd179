"""megadoc_recipes: model recipes, sweeps, the CPU trainer, evaluation and analysis."""
