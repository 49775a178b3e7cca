"""Compares runs side by side: a table (Markdown, CSV), plots, and one self-contained HTML page.

python -m research.compare.report DIR [DIR ...] --out=REPORT_DIR [--target accuracy=0.94]
"""

import argparse
import base64
import csv
import html
import json
import math
import os
import re
import statistics
import sys
from typing import Any

from research.errors import UserError
from research.runtime import workdir as workdir_lib

# Preferred metric for "best" when none is named, in order; names that fall are losses.
PREFERRED_METRICS = ("accuracy", "bleu", "exact_match", "token_accuracy", "r2", "mse", "loss")
LOWER_IS_BETTER = ("loss", "mse", "error", "perplexity")
NOT_LEARNING = ("learning_rate", *workdir_lib.TIMING_METRICS)


class ReportError(UserError, ValueError):
    """Input the report cannot use; the message names it and the fix."""


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'name': 'cnn'}} -> {'model.name': 'cnn'}; lists become tuples (hashable)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def find_workdirs(paths: list[str]) -> list[tuple[str, str]]:
    """(name, workdir) of every run under `paths`: each a workdir or a folder of them."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(f"{path} is not a folder; pass workdirs or sweep roots.")
        here = []
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = sorted(s for s in subfolders if s != workdir_lib.CHECKPOINT_DIR)
            if workdir_lib.CONFIG_FILE in files:
                here.append(folder)
                subfolders[:] = []  # a workdir holds no other runs
        if not here:
            raise ReportError(f"{path} holds no run (no config.json); pass workdirs or roots.")
        found += here
    found = list(dict.fromkeys(found))
    if len(found) == 1:
        return [(os.path.basename(os.path.normpath(found[0])), found[0])]
    base = os.path.commonpath([os.path.abspath(f) for f in found])
    return [(os.path.relpath(os.path.abspath(f), base), f) for f in found]


def load_run(name: str, workdir: str) -> dict:
    """A run's config (flattened), summary (None while unfinished) and metrics records."""
    with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as file:
        config = flatten(json.load(file))
    summary = None
    summary_path = os.path.join(workdir, workdir_lib.SUMMARY_FILE)
    if os.path.exists(summary_path):
        with open(summary_path) as file:
            summary = json.load(file)
    return {
        "name": name,
        "workdir": workdir,
        "config": config,
        "summary": summary,
        "records": workdir_lib.read_metrics(workdir),
    }


def varying_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values differ between runs. Under a prefix whose `name` differs
    (another model), only that name is kept: the other keys follow from it."""
    keys = sorted({key for run in runs for key in run["config"]})
    varying = [k for k in keys if len({repr(run["config"].get(k)) for run in runs}) > 1]
    named = [k.removesuffix("name") for k in varying if k.endswith(".name")]
    return [k for k in varying if k.endswith(".name") or not any(k.startswith(p) for p in named)]


def final_metrics(summary: dict | None) -> dict[tuple[str, str], float]:
    """{(split, metric): value} of a summary's final evaluations, evaluation splits first."""
    if not summary:
        return {}
    values = {}
    splits = sorted(
        (k for k, v in summary.items() if isinstance(v, dict)),
        key=lambda split: (split == "train", split),
    )
    for split in splits:
        for metric, value in sorted(summary[split].items()):
            if metric not in NOT_LEARNING and isinstance(value, int | float):
                values[(split, metric)] = value
    return values


def best(records: list[dict], split: str, metric: str) -> tuple[float, int] | None:
    """The best value of `metric` over the run's `split` evaluations and its step."""
    points = [(r[metric], r["step"]) for r in records if r["split"] == split and metric in r]
    if not points:
        return None
    pick = min if lower_is_better(metric) else max
    value = pick(value for value, _ in points)
    return value, next(step for v, step in points if v == value)


def time_to_target(records: list[dict], split: str, metric: str, target: float) -> float | None:
    """`elapsed_s` of the first `split` evaluation that reaches `target`, or None."""
    for record in records:
        if record["split"] == split and metric in record:
            value = record[metric]
            if (value <= target) if lower_is_better(metric) else (value >= target):
                return record.get(workdir_lib.ELAPSED)
    return None


def _config_text(value: Any) -> str | None:
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return None if value is None else str(value)


def run_row(run: dict, keys: list[str], split: str, metric: str, targets: dict) -> dict:
    """One run's cells: varying config, final metrics, best, times to target, timings."""
    summary = run["summary"] or {}
    row: dict[str, Any] = {"run": run["name"]}
    # Config values as written (0.003, not a measurement's 0.003000).
    row.update({key: _config_text(run["config"].get(key)) for key in keys})
    finals = final_metrics(run["summary"])
    row.update({f"{s} {m}": v for (s, m), v in finals.items() if s != "train"})
    found = best(run["records"], split, metric)
    row[f"best {split} {metric}"] = found[0] if found else None
    row[f"best {split} {metric} step"] = found[1] if found else None
    for name, target in targets.items():
        row[f"time to {split} {name} {'≤' if lower_is_better(name) else '≥'} {target} (s)"] = (
            time_to_target(run["records"], split, name, target)
        )
    row["wall time (s)"] = summary.get("wall_time_s")
    row["steps/s"] = summary.get("steps_per_second")
    # Training metrics last: the averages of the last logging interval, not evaluations.
    row.update({f"{s} {m}": v for (s, m), v in finals.items() if s == "train"})
    return row


def group_label(names: list[str]) -> str:
    """'cnn/seed=0', 'cnn/seed=1' -> 'cnn/seed=*' (else the first name and how many more)."""
    labels = {re.sub(r"seed=[^_/]*", "seed=*", name) for name in names}
    if len(labels) == 1 and len(names) > 1 and "seed=*" in next(iter(labels)):
        return labels.pop()
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} seeds)"


def group_rows(runs: list[dict], rows: list[dict], keys: list[str]) -> list[dict]:
    """Runs whose configs differ only in `seed` become one row: numbers as (mean, std, count).

    Two runs with the same config and seed are one experiment run twice, not two seeds: refused.
    """
    groups: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        others = sorted((k, repr(v)) for k, v in run["config"].items() if k != "seed")
        members = groups.setdefault(repr(others), [])
        twin = next(
            (i for i in members if runs[i]["config"].get("seed") == run["config"].get("seed")), None
        )
        if twin is not None:
            raise ReportError(
                f"{runs[twin]['workdir']} and {run['workdir']} are runs of the same config and "
                f"seed, which would count as two seeds; pass only one of them."
            )
        members.append(index)
    grouped = []
    for members in groups.values():
        names = [rows[i]["run"] for i in members]
        row: dict[str, Any] = {"run": group_label(names), "seeds": len(members)}
        for column in rows[members[0]]:
            if column in ("run", "seed"):
                continue
            values = [rows[i].get(column) for i in members]
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            if column in keys or not numbers:
                row[column] = values[0]
            elif column.endswith(" step"):  # where the best was reached: not averaged
                row[column] = values
            else:
                std = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
                row[column] = (statistics.fmean(numbers), std, len(numbers), len(values))
        grouped.append(row)
    return grouped


def format_number(value: float, digits: int = 4) -> str:
    """`digits` significant digits, never in exponent notation (a table reads by place)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_cell(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, (mean, std, n, of) as mean ± std."""
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple) and len(value) == 4 and isinstance(value[2], int):
        mean, std, count, total = value
        text = format_number(mean) + (f" ± {format_number(std, 2)}" if count > 1 else "")
        return text if count == total else f"{text} ({count}/{total} runs)"
    if isinstance(value, list):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_html_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    # Headers may wrap at underscores too (closed_form_mse), so no column is wider than its data.
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(format_cell(row.get(c)))}</td>" for c in columns)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_csv(path: str, rows: list[dict]) -> None:
    """Full precision; a grouped number becomes `<column> mean` and `<column> std` columns."""
    flat_rows = []
    for row in rows:
        flat = {}
        for column, value in row.items():
            if isinstance(value, tuple) and len(value) == 4 and isinstance(value[2], int):
                flat[f"{column} mean"], flat[f"{column} std"] = value[0], value[1]
            elif isinstance(value, tuple | list):
                flat[column] = json.dumps(list(value))
            else:
                flat[column] = "" if value is None else value
        flat_rows.append(flat)
    columns = list(dict.fromkeys(c for row in flat_rows for c in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat_rows)


def unfinished_points(paths: list[str]) -> list[dict]:
    """Sweep points under `paths` that did not finish, from their sweep.json."""
    points = []
    for path in paths:
        sweep_path = os.path.join(path, "sweep.json")
        if os.path.exists(sweep_path):
            with open(sweep_path) as file:
                for point in json.load(file)["points"]:
                    if point.get("status") != "finished":
                        points.append(
                            {
                                "point": point["name"],
                                "status": point.get("status"),
                                "error": point.get("error"),
                            }
                        )
    return points


def choose_metric(runs: list[dict], split: str | None, metric: str | None) -> tuple[str, str]:
    """The split and metric the best value and the sweep plot are about."""
    available = set().union(*(final_metrics(run["summary"]) for run in runs))
    splits = [s for s, _ in sorted(available, key=lambda sm: (sm[0] == "train", sm[0]))]
    split = split or (
        "test" if ("test", metric or "loss") in available or not splits else splits[0]
    )
    if metric is None:
        names = [m for s, m in available if s == split]
        metric = next((m for m in PREFERRED_METRICS if m in names), names[0] if names else "loss")
    return split, metric


def build(paths: list[str], out: str, targets: dict, split=None, metric=None) -> dict:
    """Writes report.md, runs.csv, groups.csv, the plots and report.html into `out`."""
    from research.compare import report_plots

    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"--out={out} is a file; pass a folder (new or existing) for the report.")
    runs = [load_run(name, workdir) for name, workdir in find_workdirs(paths)]
    if metric is None and targets:
        metric = next(iter(targets))
    split, metric = choose_metric(runs, split, metric)
    keys = varying_keys(runs)
    rows = [run_row(run, keys, split, metric, targets) for run in runs]
    grouped = group_rows(runs, rows, keys) if "seed" in keys else []
    if grouped and all(row["seeds"] == 1 for row in grouped):
        grouped = []
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ReportError(
            f"--out={out} cannot be made ({error.strerror}); pass a folder you can write to."
        ) from None
    write_csv(os.path.join(out, "runs.csv"), rows)
    if grouped:
        write_csv(os.path.join(out, "groups.csv"), grouped)
    figures = report_plots.draw(runs, [k for k in keys if k != "seed"], split, metric, out)
    failed = unfinished_points(paths)
    sections = [
        ("Seeds grouped (mean ± standard deviation)", grouped),
        ("Runs", rows),
        ("Sweep points that did not finish", failed),
    ]
    markdown = [
        f"# Report: {', '.join(paths)}\n",
        f"Best and time to target are over `{split}` evaluations of `{metric}`.\n",
    ]
    for title, table in sections:
        if table:
            markdown += [f"## {title}\n", to_markdown(table)]
    markdown += [f"![{name}]({name})\n" for name in figures]
    with open(os.path.join(out, "report.md"), "w") as file:
        file.write("\n".join(markdown))
    with open(os.path.join(out, "report.html"), "w") as file:
        file.write(html_page(paths, split, metric, sections, out, figures))
    return {"runs": rows, "groups": grouped, "figures": figures, "split": split, "metric": metric}


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;white-space:normal;max-width:8em;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee}
.scroll{overflow-x:auto}"""


def html_page(paths, split, metric, sections, out, figures) -> str:
    """One page with the tables and the plots embedded (base64), readable with no server."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Report</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Report: {html.escape(', '.join(paths))}</h1>",
        f"<p>Best and time to target are over <code>{html.escape(split)}</code> "
        f"evaluations of <code>{html.escape(metric)}</code>.</p>",
    ]
    for title, table in sections:
        if table:
            parts.append(f"<h2>{html.escape(title)}</h2><div class='scroll'>")
            parts.append(to_html_table(table) + "</div>")
    for name in figures:
        with open(os.path.join(out, name), "rb") as file:
            encoded = base64.b64encode(file.read()).decode()
        parts.append(
            f"<h2>{html.escape(name)}</h2><img alt='{name}' src='data:image/png;base64,{encoded}'>"
        )
    return "\n".join(parts) + "</body></html>\n"


def parse_targets(items: list[str]) -> dict[str, float]:
    targets = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            targets[name] = float(value)
        except ValueError:
            raise ReportError(
                f"--target {item} is not metric=number; write it like --target accuracy=0.94."
            ) from None
    return targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="Workdirs or folders of workdirs (sweep roots).")
    parser.add_argument("--out", required=True, help="Folder the report is written into.")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        help="metric=value, e.g. accuracy=0.94: time until an evaluation reaches it.",
    )
    parser.add_argument("--split", help="Evaluation split of best and target (default test).")
    parser.add_argument("--metric", help="Metric of best and the sweep plot (default accuracy…).")
    arguments = parser.parse_args(argv)
    try:
        result = build(
            arguments.dirs,
            arguments.out,
            parse_targets(arguments.target),
            arguments.split,
            arguments.metric,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(result['runs'])} runs -> {os.path.join(arguments.out, 'report.html')}")


if __name__ == "__main__":
    main()
