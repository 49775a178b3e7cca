"""Compares a rerun with the run it reproduces: parameters and every recorded metric."""

import json
import os

from research.runtime import workdir as workdir_lib


def initialized_from(workdir: str) -> str | None:
    """`WORKDIR@STEP`: the checkpoint whose parameters the run started from (--init_from),
    if any; exactly the recorded step, not the source's newest."""
    record = workdir_lib.read_run(workdir).get("initialized_from") or {}
    if not record.get("workdir"):
        return None
    return f"{record['workdir']}@{record['step']}" if "step" in record else record["workdir"]


def check_finished(workdir: str) -> None:
    """Refuses, before any training, to reproduce a run that has no summary yet."""
    _summary(workdir)


def _summary(workdir: str) -> dict:
    path = os.path.join(workdir, workdir_lib.SUMMARY_FILE)
    if not os.path.exists(path):
        raise workdir_lib.WorkdirError(
            f"{workdir} has no {workdir_lib.SUMMARY_FILE} (the run did not finish); resume it "
            "by launching it again before reproducing it."
        )
    with open(path) as file:
        return json.load(file)


def first_difference(original: list[dict], rerun: list[dict]) -> dict | None:
    """The first (step, split, metric) whose values differ, or None if all are identical."""
    for before, after in zip(original, rerun, strict=False):
        if (before["step"], before["split"]) != (after["step"], after["split"]):
            return {"step": before["step"], "split": before["split"], "metric": "(records)"}
        for name in sorted(set(before) | set(after)):
            if name in workdir_lib.TIMING_METRICS:
                continue
            if before.get(name) != after.get(name):
                return {
                    "step": before["step"],
                    "split": before["split"],
                    "metric": name,
                    "original": before.get(name),
                    "rerun": after.get(name),
                }
    if len(original) != len(rerun):
        shorter = original if len(original) < len(rerun) else rerun
        step = shorter[-1]["step"] if shorter else 0
        return {"step": step, "split": "", "metric": "(number of records)"}
    return None


def compare(original_workdir: str, rerun_workdir: str) -> dict:
    """Whether the rerun reproduced the original: parameters hash and metrics."""
    original_hash = _summary(original_workdir)["params_sha256"]
    rerun_hash = _summary(rerun_workdir)["params_sha256"]
    difference = first_difference(
        workdir_lib.read_metrics(original_workdir), workdir_lib.read_metrics(rerun_workdir)
    )
    started = [
        (workdir_lib.read_run(w).get("initialized_from") or {}).get("params_sha256")
        for w in (original_workdir, rerun_workdir)
    ]
    report = {
        "params_match": original_hash == rerun_hash,
        "metrics_match": difference is None,
        "first_difference": difference,
        "original_params_sha256": original_hash,
        "rerun_params_sha256": rerun_hash,
        # --init_from: the checkpoint both runs started from, unless it changed in between
        "init_from": initialized_from(original_workdir),
        "init_from_match": started[0] == started[1],
        "original_init_params_sha256": started[0],
        "rerun_init_params_sha256": started[1],
    }
    report["reproduced"] = all(
        report[k] for k in ("params_match", "metrics_match", "init_from_match")
    )
    return report


def describe(report: dict) -> str:
    """A short human-readable verdict."""
    if report["reproduced"]:
        return f"Reproduced: params_sha256 {report['rerun_params_sha256']} and every metric match."
    lines = ["NOT reproduced:"]
    if not report["init_from_match"]:
        lines.append(
            f"  the --init_from checkpoint {report['init_from']} has changed since the "
            f"original run started from it (params_sha256 {report['rerun_init_params_sha256']} "
            f"!= recorded {report['original_init_params_sha256']}), so the rerun did not start "
            "from the same parameters"
        )
    if not report["params_match"]:
        lines.append(
            f"  params_sha256 {report['rerun_params_sha256']} "
            f"!= original {report['original_params_sha256']}"
        )
    if difference := report["first_difference"]:
        lines.append(
            f"  metrics first differ at step {difference['step']} ({difference['split']} "
            f"{difference['metric']}: {difference.get('original')} -> {difference.get('rerun')})"
        )
    return "\n".join(lines)
