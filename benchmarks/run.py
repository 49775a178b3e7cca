"""Benchmark suite: training speed against the bare step, PyTorch, and the CPU's peak.

    .venv/bin/python benchmarks/run.py [--quick] --out=results.json [--only NAME ...]

Each benchmark runs in a fresh process (`--child`), measuring the compiled (jitted) train step
alone, the full `train_and_evaluate` loop, and a PyTorch twin. The parent measures the CPU's
float32 matmul peak and the first and second launch of `launch.py` with JAX's persistent
compilation cache. See NOTES.md for what the numbers mean and how they were checked.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import suite  # noqa: E402 (after the path is set)

MATMUL_SIZE = 4096
COLUMNS = (
    ("name", "{:<22}"),
    ("examples_per_s", "{:>10.0f}"),
    ("bare_examples_per_s", "{:>10.0f}"),
    ("loop_overhead", "{:>8.1%}"),
    ("steady_loop_overhead", "{:>8.1%}"),
    ("median_interval_overhead", "{:>8.1%}"),
    ("input_wait_fraction", "{:>8.1%}"),
    ("mfu", "{:>7.1%}"),
    ("compile_s", "{:>7.1f}"),
    ("torch_examples_per_s", "{:>10.0f}"),
    ("torch_1thread_examples_per_s", "{:>10.0f}"),
    ("speedup_vs_torch", "{:>7.2f}"),
    ("peak_memory_mb", "{:>8.0f}"),
)
HEADERS = ("name", "ex/s", "bare ex/s", "overhead", "steady", "median", "input", "MFU", "compile",
           "torch", "torch 1t", "vs torch", "peak MB")  # fmt: skip


def matmul_peak_flops(repeats: int = 5) -> float:
    """Best float32 FLOP/s of a jitted 4096x4096 @ 4096x4096 product."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best


def child_environment(extra_xla_flags: str, cache_dir: str | None = None) -> dict[str, str]:
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    flags = f"{environment.get('XLA_FLAGS', '')} {extra_xla_flags}".strip()
    if flags:
        environment["XLA_FLAGS"] = flags
    if cache_dir:
        environment["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        environment["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        environment["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return environment


def parse_settings(items: list[str]) -> dict:
    """`--set key=value` pairs as config values (Python literals, else strings)."""
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def run_benchmark(
    name: str, mode: str, peak_flops: float, xla_flags: str, settings: list[str]
) -> dict:
    """One benchmark in a fresh process; its own compilation cache lets the full loop reuse
    the bare step's executable instead of compiling it a second time. The config's
    `xla_flags` are added to the process's XLA_FLAGS, as launch.py does."""
    config = suite.load_config(suite.BY_NAME[name], mode == "quick", parse_settings(settings))
    xla_flags = f"{xla_flags} {config.xla_flags}".strip()
    cache_dir = tempfile.mkdtemp(prefix="benchmark_cache_")
    row_file = os.path.join(cache_dir, "row.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--mode", mode,
               "--peak-flops", str(peak_flops), "--out", row_file]  # fmt: skip
    command += [f"--set={item}" for item in settings]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command,
            env=child_environment(xla_flags, cache_dir),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            print(result.stderr[-4000:], file=sys.stderr)
            return {"name": name, "error": result.stderr.strip().splitlines()[-1]}
        with open(row_file) as file:
            row = json.load(file)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    row["process_s"] = time.perf_counter() - start
    return row


def launch_times(steps: int) -> dict:
    """Wall time of short `launch.py` runs: without the persistent compilation cache, then
    twice sharing one fresh cache directory (the first fills it, the second reads it)."""
    cache_dir = tempfile.mkdtemp(prefix="benchmark_launch_cache_")
    workdirs = tempfile.mkdtemp(prefix="benchmark_launch_runs_")
    config = "experiments/image_classification/configs/mnist1d_cnn.py"
    times = {}
    try:
        for launch, cache in (("no_cache", ""), ("first", cache_dir), ("second", cache_dir)):
            command = [sys.executable, os.path.join(REPO_ROOT, "launch.py"), f"--config={config}",
                       f"--config.num_train_steps={steps}", f"--config.warmup_steps={steps // 2}",
                       f"--config.eval_every_steps={steps}", f"--config.log_every_steps={steps}",
                       f"--config.checkpoint_every_steps={steps}",
                       f"--compilation_cache_dir={cache}",
                       f"--workdir={os.path.join(workdirs, launch)}"]  # fmt: skip
            # The environment variables cover a launch.py without --compilation_cache_dir.
            environment = child_environment("", cache or None)
            start = time.perf_counter()
            subprocess.run(command, env=environment, cwd=REPO_ROOT, check=True, capture_output=True)
            times[launch] = time.perf_counter() - start
        entries = os.listdir(cache_dir)
        cache_mb = sum(os.path.getsize(os.path.join(cache_dir, e)) for e in entries) / 2**20
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(workdirs, ignore_errors=True)
    return {
        "command": f"launch.py --config={config}, {steps} steps, evaluation at the end",
        "cache": "launch.py --compilation_cache_dir=<fresh directory>; '' for no_cache_launch_s",
        "no_cache_launch_s": times["no_cache"],
        "first_launch_s": times["first"],
        "second_launch_s": times["second"],
        "cache_entries": len(entries),
        "cache_mb": cache_mb,
    }


def print_table(rows: list[dict]) -> None:
    widths = [len(fmt.format(0 if key != "name" else "")) for key, fmt in COLUMNS]
    print(" ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in
                   enumerate(zip(HEADERS, widths, strict=True))))  # fmt: skip
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<22} failed: {row['error']}")
            continue
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, fmt in COLUMNS]
        print(" ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, smaller ResNet batch")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--only", nargs="*", choices=list(suite.BY_NAME), help="these benchmarks")
    parser.add_argument("--skip-launch", action="store_true", help="no launch.py timing")
    parser.add_argument("--xla-flags", default="", help="added to XLA_FLAGS of every benchmark")
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE: a config key of every benchmark"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--peak-flops", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from benchmarks import measure

        row = measure.measure(args.child, args.mode, args.peak_flops, parse_settings(args.set))
        with open(args.out, "w") as file:
            json.dump(measure.numbers_only(row), file)
        return

    mode = "quick" if args.quick else "full"
    started, load_before = time.time(), os.getloadavg()
    peak_before = matmul_peak_flops()
    print(f"float32 matmul peak: {peak_before / 1e9:.0f} GFLOP/s", flush=True)
    rows = []
    for name in args.only or list(suite.BY_NAME):
        rows.append(run_benchmark(name, mode, peak_before, args.xla_flags, args.set))
        print(f"{name}: {rows[-1].get('process_s', 0):.0f} s", flush=True)
    peak_after = matmul_peak_flops()
    startup = None if args.skip_launch else launch_times(steps=10 if args.quick else 20)
    print_table(rows)
    if startup:
        print(
            f"launch.py: no cache {startup['no_cache_launch_s']:.1f} s, first "
            f"{startup['first_launch_s']:.1f} s, second {startup['second_launch_s']:.1f} s "
            f"({startup['cache_entries']} cache entries, {startup['cache_mb']:.1f} MB)"
        )
    environment_row = {
        "name": "environment",
        "mode": mode,
        "xla_flags": " ".join(filter(None, [os.environ.get("XLA_FLAGS"), args.xla_flags])),
        "peak_flops": peak_before,
        "peak_flops_at_end": peak_after,
        "peak_note": (
            f"best of 5 jitted float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmuls before the benchmarks;"
            " mfu = cost_analysis flops of the compiled jitted step (per-device program x mesh"
            " devices) x bare steps/s / this peak"
        ),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "duration_s": time.time() - started,
    }
    extra_rows = [{"name": "startup", **startup}] if startup else []
    with open(args.out, "w") as file:
        json.dump([*rows, *extra_rows, environment_row], file, indent=1)


if __name__ == "__main__":
    main()
