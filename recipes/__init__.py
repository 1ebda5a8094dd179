"""megadoc.recipes: the paper's models and training recipes: typed model shapes (`models`), Megatron-Bridge
`ConfigContainer` recipes (`bridge`), and the hyperparameter grid with the one run-name scheme (`sweep`)."""
