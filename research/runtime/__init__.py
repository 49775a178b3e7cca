"""Where a run executes and persists: the device mesh across hosts (`parallel`), the
workdir and its records, checkpoints, preemption signals and `--reproduce`."""
