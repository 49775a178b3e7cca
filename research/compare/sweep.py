"""Runs the cross product of a grid of config values, each point an ordinary `launch.py` run.

python -m research.compare.sweep --config=PATH[:arg] --root=DIR
    --grid='learning_rate=1e-3,3e-3 seed=0,1,2'
    [--parallel=N] [--config.key=value ...] [--print_commands] [--point=INDEX]
"""

import ast
import difflib
import json
import os
import re
import shlex
import signal
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from research.compare.sweep_runner import (
    Owner,
    Record,
    Runner,
    SweepError,
    canonical,
    run_all,
)
from research.errors import UserError, flag_error_sentence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string("root", None, "Folder of the sweep: one workdir per point, and sweep.json.")
flags.DEFINE_string("grid", None, "Values per key: 'learning_rate=1e-3,3e-3 seed=0,1,2'.")
flags.DEFINE_integer("parallel", 1, "How many points run at once, each on its share of cores.")
flags.DEFINE_bool("print_commands", False, "Print each point's launch.py command and exit.")
flags.DEFINE_integer("point", None, "Run only the point of this index (one per cluster task).")
FLAGS = flags.FLAGS


def split_values(text: str) -> list[str]:
    """'1e-3,(64, 64),x' -> ['1e-3', '(64, 64)', 'x']: commas inside brackets stay."""
    values, depth, current = [], 0, ""
    for character in text:
        depth += character in "([{"
        depth -= character in ")]}"
        if character == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += character
    values.append(current.strip())
    return values


def _keys(config, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, "keys"):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


def _lookup(config, key: str) -> Any:
    target = config
    for part in key.split("."):
        if not hasattr(target, "keys") or part not in target:
            close = difflib.get_close_matches(key, _keys(config), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SweepError(
                f"--grid key '{key}' is not a key of the config{hint}; use a key the config "
                "file sets, spelled as there."
            )
        target = target[part]
    return target


def parse_value(key: str, text: str, default: Any) -> Any:
    """`text` as a value of `default`'s type, or a `SweepError` naming the key."""
    expected = type(default).__name__
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        if isinstance(default, tuple | list) or default is None:
            value = ast.literal_eval(text)
            if default is not None and not isinstance(value, tuple | list):
                raise ValueError(text)
            return tuple(value) if isinstance(value, list) else value
    except (ValueError, SyntaxError):
        pass
    raise SweepError(
        f"--grid value '{text}' of {key} is not of the config's type ({expected}, default "
        f"{default!r}); give {key} values like {default!r}."
    )


def parse_grid(text: str, config) -> dict[str, list[tuple[str, Any]]]:
    """'lr=1e-3,3e-3 seed=0,1' -> {key: [(text, value), ...]}, checked against `config`."""
    grid = {}
    for item in re.split(r"\s+(?=[\w.]+=)", (text or "").strip()):
        key, equals, values = item.partition("=")
        if not equals or not key or not values:
            raise SweepError(
                f"--grid item '{item}' is not key=value,value; write the grid like "
                "--grid='learning_rate=1e-3,3e-3 seed=0,1,2'."
            )
        if key in grid:
            raise SweepError(f"--grid names {key} twice; give all its values in one item.")
        default = _lookup(config, key)
        if hasattr(default, "keys"):
            raise SweepError(f"--grid key '{key}' is a group of keys; sweep one of its keys.")
        options = []
        for text in split_values(values):
            value = parse_value(key, text, default)
            twin = next((t for t, v in options if canonical(v) == canonical(value)), None)
            if twin is not None:
                raise SweepError(
                    f"--grid gives {key} the value {value_text(value)} twice ('{twin}' and "
                    f"'{text}'); list each value once."
                )
            options.append((text, value))
        grid[key] = options
    return grid


def value_text(value: Any) -> str:
    """A value as a workdir name shows it: its canonical spelling, sign kept ('-0.5', '8-8')."""
    if isinstance(value, tuple | list):
        return "-".join(value_text(item) for item in value) or "empty"
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^\w.+-]", "-", text) or "empty"


def point_name(values: dict[str, Any]) -> str:
    """The workdir name of a point: 'learning_rate=0.001_seed=0', from the parsed values."""
    return "_".join(f"{key}={value_text(value)}" for key, value in values.items())


def plan(config_argument: str, root: str, grid: dict, overrides: list[str], config) -> dict:
    """The sweep record: the grid and every point's name, values, expected config and command."""
    points = [{}]
    for key, options in grid.items():
        points = [{**point, key: option} for point in points for option in options]
    records = []
    for point in points:
        texts = {key: text for key, (text, _) in point.items()}
        values = {key: value for key, (_, value) in point.items()}
        name = point_name(values)
        twin = next((r for r in records if r["name"] == name), None)
        if twin is not None:
            raise SweepError(
                f"--grid gives the points {twin['values']} and {values} one workdir name, "
                f"{name}; give values that differ in letters or digits."
            )
        resolved = config.copy_and_resolve_references()
        with resolved.unlocked():
            for key, value in values.items():
                *parents, leaf = key.split(".")
                target = resolved
                for parent in parents:
                    target = target[parent]
                target[leaf] = value
        command = [sys.executable, os.path.join(REPO_ROOT, "launch.py")]
        command += [f"--config={config_argument}", f"--workdir={os.path.join(root, name)}"]
        command += overrides + [f"--config.{key}={text}" for key, text in texts.items()]
        records.append(
            {
                "name": name,
                "values": values,
                "config": json.loads(resolved.to_json_best_effort()),
                "command": command,
            }
        )
    grid_record = {key: [value for _, value in options] for key, options in grid.items()}
    return {
        "config": config_argument,
        "overrides": overrides,
        "grid": grid_record,
        "points": records,
    }


def forwarded_overrides(argv: list[str]) -> list[str]:
    """The --config.<key>=<value> flags, passed on to every point unchanged."""
    return [arg for arg in argv if arg.startswith("--config.")]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SweepError(f"unexpected arguments {argv[1:]}; pass settings as flags.")
    if not FLAGS.root or not FLAGS.grid:
        raise SweepError(
            "--root and --grid are required; see `python -m research.compare.sweep --help`."
        )
    if FLAGS.parallel < 1:
        raise SweepError(f"--parallel={FLAGS.parallel}; pass 1 or more.")
    config = FLAGS.config
    grid = parse_grid(FLAGS.grid, config)
    overrides = forwarded_overrides(sys.argv)
    both = [o for o in overrides if o.split("=")[0].removeprefix("--config.") in grid]
    if both:
        raise SweepError(f"{both[0].split('=')[0]} is also in --grid; give it in one place.")
    config_argument = FLAGS["config"].config_filename
    path, colon, argument = config_argument.partition(":")
    config_argument = os.path.abspath(path) + colon + argument
    root = os.path.abspath(FLAGS.root)
    planned = plan(config_argument, root, grid, overrides, config)
    if FLAGS.print_commands:
        print("\n".join(shlex.join(point["command"]) for point in planned["points"]))
        return
    if FLAGS.point is not None and not 0 <= FLAGS.point < len(planned["points"]):
        raise SweepError(
            f"--point={FLAGS.point} is outside the grid's {len(planned['points'])} points; "
            f"pass 0 to {len(planned['points']) - 1}."
        )
    os.makedirs(root, exist_ok=True)
    owner = Owner(root, shared=FLAGS.point is not None)  # noqa: F841 (held until exit)
    record = Record(root)
    planned["points"] = record.start(planned)
    runner = Runner(root, record)
    signal.signal(signal.SIGTERM, runner.stop)
    if FLAGS.point is not None:
        status = runner.run(FLAGS.point, planned["points"][FLAGS.point])
        sys.exit(0 if status == "finished" else 1)
    counts = run_all(runner, planned, FLAGS.parallel)
    print(f"{root}: " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    sys.exit(0 if set(counts) == {"finished"} else 1)


def _run(argv: list[str]) -> None:
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("Stopped; run the same command again to resume the sweep.", file=sys.stderr)
        sys.exit(130)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = FLAGS(argv)
        if FLAGS.config is None:
            raise ValueError("--config is required: --config=experiments/<task>/configs/<name>.py")
        FLAGS.config.keys()  # the config file is loaded (and may fail) on first access
    except Exception as error:  # config_flags raises several types for bad input
        print(f"error: {flag_error_sentence(error, argv)}", file=sys.stderr)
        sys.exit(2)
    return remaining


if __name__ == "__main__":
    sys.argv = [
        f"--config={os.path.join(REPO_ROOT, a[9:])}"
        if a.startswith("--config=")
        and not os.path.exists(a[9:].split(":")[0])
        and os.path.exists(os.path.join(REPO_ROOT, a[9:].split(":")[0]))
        else a
        for a in sys.argv
    ]
    config_flags.DEFINE_config_file("config", None, "Experiment config file, `path.py[:arg]`.")
    app.run(_run, flags_parser=_parse_flags)
