"""The report's plots: every run's learning curves overlaid, and final metric vs swept values."""

import os
import re

import numpy as np

from research.compare import report
from research.runtime import curves

CURVES_FILE = "curves.png"
SWEEP_FILE = "final_vs_swept.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _group_of(run: dict, keys: list[str]) -> str:
    """Runs that differ only in seed share a colour: the label of their group."""
    values = [f"{key}={run['config'].get(key)}" for key in keys]
    return ", ".join(values) if values else re.sub(r"seed=[^_/]*", "seed=*", run["name"])


def draw(runs: list[dict], swept: list[str], split: str, metric: str, out: str) -> list[str]:
    """Writes the plots into `out`; returns their file names."""
    names = [_curves(runs, swept, out)]
    if swept and any(run["summary"] for run in runs):
        names.append(_final_vs_swept(runs, swept, split, metric, out))
    return [name for name in names if name]


def _curves(runs: list[dict], swept: list[str], out: str) -> str | None:
    """One panel per (split, metric), loss first; one line per run, one colour per group."""
    points: dict[tuple[str, str], dict[str, list]] = {}
    for run in runs:
        for record in run["records"]:
            for name, value in record.items():
                if name not in ("step", "split", *report.NOT_LEARNING):
                    by_run = points.setdefault((record["split"], name), {})
                    by_run.setdefault(run["name"], []).append((record["step"], value))
    if not points:
        return None
    order = sorted(points, key=lambda sm: (sm[1] != "loss", sm[1], sm[0] == "train", sm[0]))
    panels = {}
    for split, name in order:
        panels[f"{split} {name}"] = [
            curves.line(_group_of(run, swept), points[(split, name)][run["name"]])
            for run in runs
            if run["name"] in points[(split, name)]
        ]
    log_scale = frozenset(f"{s} {n}" for s, n in order if report.lower_is_better(n))
    curves.draw(panels, os.path.join(out, CURVES_FILE), log_scale=log_scale)
    return CURVES_FILE


def _final_vs_swept(runs: list[dict], swept: list[str], split: str, metric: str, out: str) -> str:
    """One panel per swept key: each run's final metric at its value, and the mean per value."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(swept), figsize=(4.6 * len(swept), 3.6), squeeze=False)
    for axis, key in zip(axes.flat, swept, strict=True):
        points = [
            (run["config"].get(key), (run["summary"] or {}).get(split, {}).get(metric))
            for run in runs
        ]
        points = [(x, y) for x, y in points if y is not None]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
        labels = sorted({repr(x) for x, _ in points}) if not numeric else []

        def position(x, labels=labels, numeric=numeric):
            return x if numeric else labels.index(repr(x))

        axis.scatter(
            [position(x) for x, _ in points], [y for _, y in points], alpha=0.7, label="runs"
        )
        means = {}
        for x, y in points:
            means.setdefault(position(x), []).append(y)
        xs = sorted(means)
        axis.plot(
            xs,
            [np.mean(means[x]) for x in xs],
            color="black",
            marker="_",
            markersize=14,
            linewidth=1,
            linestyle="-" if numeric else "none",  # categories have no order to connect
            label="mean",
        )
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            axis.set_xscale("log")
        finals = [y for _, y in points]
        if finals and report.lower_is_better(metric) and 0 < 10 * min(finals) <= max(finals):
            axis.set_yscale("log")
        if not numeric:
            axis.set_xticks(range(len(labels)), [label.strip("'") for label in labels])
        axis.set_xlabel(key)
        axis.set_ylabel(f"final {split} {metric}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(os.path.join(out, SWEEP_FILE), dpi=90)
    plt.close(figure)
    return SWEEP_FILE
