"""Time to target: the first evaluation of a finished run that reaches a metric's target.

    .venv/bin/python benchmarks/time_to_target.py WORKDIR --metric accuracy --target 0.94
        [--split test] [--lower-is-better]

Reads WORKDIR/metrics.jsonl, whose records carry `elapsed_s`, the wall time since the run
began in its process (data loading and compilation included, Python's imports not). The
answer is only as fine as the run's `eval_every_steps`, and meaningful for a run that was
not resumed.
"""

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from research.runtime import workdir as workdir_lib  # noqa: E402 after the path is set


def time_to_target(
    records: list[dict], metric: str, target: float, split: str, lower_is_better: bool = False
) -> dict | None:
    """The first `split` record whose `metric` reaches `target`, or None if none does."""
    for record in records:
        if record["split"] != split or metric not in record:
            continue
        value = record[metric]
        if (value <= target) if lower_is_better else (value >= target):
            return {
                "step": record["step"],
                metric: value,
                workdir_lib.ELAPSED: record.get(workdir_lib.ELAPSED),
            }
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--lower-is-better", action="store_true")
    arguments = parser.parse_args()
    records = workdir_lib.read_metrics(arguments.workdir)
    if not records:
        sys.exit(f"error: {arguments.workdir} has no {workdir_lib.METRICS_FILE}; pass a workdir.")
    reached = time_to_target(
        records, arguments.metric, arguments.target, arguments.split, arguments.lower_is_better
    )
    if reached is None:
        values = [r[arguments.metric] for r in records if r["split"] == arguments.split
                  and arguments.metric in r]  # fmt: skip
        print(json.dumps({"reached": False, "evaluations": len(values), "values": values}))
    else:
        print(json.dumps({"reached": True, **reached}))


if __name__ == "__main__":
    main()
