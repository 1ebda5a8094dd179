"""megadoc.slurm: the pipeline on Slurm: sbatch scripts (`sbatch`) and nemo-run's SlurmExecutor (`nemo_run`),
siblings of the local executor over `megadoc.launch.executor`; `submit` is the `megadoc submit` command;
`local-cluster.sh` starts a one-node cluster for trying it."""
