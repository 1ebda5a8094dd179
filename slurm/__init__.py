"""megadoc_slurm: submitting the whole pipeline to Slurm, and a one-node local cluster."""
