"""megadoc.launch: the whole method as one pipeline of `megadoc` commands (`pipeline`), what every executor
shares (`executor`: where outputs and done markers live), the local executor (`local`: `megadoc run`) and the demo.
The Slurm executors (sbatch, nemo-run) are its siblings in `megadoc.slurm`."""
