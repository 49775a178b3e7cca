"""Every experiment of NOTES.md, each `cnn_step.py` run in a fresh process, interleaved.

    .venv/bin/python tests/benchmarks/cnn_experiments.py [--rounds=2] [--only TEXT ...] \
        [--out=rows.json]

All experiments run once per round, one after the other, so that load from other processes
on the machine spreads over all of them alike; a row keeps its best time over the rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CNN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cnn_step.py")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each experiment: (name, command-line arguments, extra environment). Unless the arguments
# name --threads, both frameworks run on one thread (see run_experiments). NOTES.md has the
# prediction written for each before it was measured.
NO_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type="
NO_YNN_ELTWISE = "--xla_cpu_experimental_ynn_fusion_type=-eltwise,-reduce"
NO_YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
EXPERIMENTS = [
    ("torch avg", "--framework=torch", {}),
    ("jax avg (baseline)", "", {}),
    ("torch max", "--framework=torch --pooling=max", {}),
    ("jax max", "--pooling=max", {}),
    ("torch avg forward", "--framework=torch --part=forward", {}),
    ("jax avg forward", "--part=forward", {}),
    ("torch avg forward+backward", "--framework=torch --part=grad", {}),
    ("jax avg forward+backward", "--part=grad", {}),
    ("jax avg xnnpack flag", "", {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
    (
        "jax avg YNNPACK eltwise+reduce off",
        "",
        {"XLA_FLAGS": NO_YNN_ELTWISE},
    ),
    ("jax avg YNNPACK off", "", {"XLA_FLAGS": NO_YNNPACK}),
    ("jax avg oneDNN", "", {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
    ("jax avg fast math", "", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}),
    ("jax avg reshape pooling", "--model=nhwc_reshape", {}),
    ("jax max reshape pooling", "--pooling=max --model=nhwc_reshape", {}),
    ("jax avg NCHW", "--model=nchw_reduce_window", {}),
    ("jax avg first conv as patches", "--model=nhwc_reduce_window --patches=first", {}),
    ("jax stride-2 convs, no pooling", "--model=nhwc_strided_conv", {}),
    ("jax avg bfloat16", "--dtype=bfloat16", {}),
    ("torch avg bfloat16 autocast", "--framework=torch --dtype=bfloat16", {}),
    ("torch avg channels_last", "--framework=torch --channels-last", {}),
    ("jax avg batch 512", "--batch=512", {}),
    ("torch avg batch 512", "--framework=torch --batch=512", {}),
    ("jax avg 2 threads", "--threads=2", {}),
    ("torch avg 2 threads", "--framework=torch --threads=2", {}),
    (
        "torch avg 2 threads passive",
        "--framework=torch --threads=2",
        {"OMP_WAIT_POLICY": "PASSIVE"},
    ),
    # Second series, after the first results (NOTES.md section 4).
    ("jax avg batch 512 YNNPACK off", "--batch=512", {"XLA_FLAGS": NO_YNNPACK}),
    ("jax avg batch 512 YNNPACK convolutions off", "--batch=512", {"XLA_FLAGS": NO_YNN_CONV}),
    ("jax avg batch 64", "--batch=64", {}),
    ("torch avg batch 64", "--framework=torch --batch=64", {}),
    (
        "jax avg reshape pooling, YNNPACK eltwise+reduce off",
        "--model=nhwc_reshape",
        {"XLA_FLAGS": NO_YNN_ELTWISE},
    ),
    (
        "jax max reshape pooling, YNNPACK eltwise+reduce off",
        "--pooling=max --model=nhwc_reshape",
        {"XLA_FLAGS": NO_YNN_ELTWISE},
    ),
    ("jax avg 2 micro-batches of 64", "--microbatches=2", {}),
    ("jax avg 4 micro-batches of 32", "--microbatches=4", {}),
    (
        "jax max reshape pooling, 2 micro-batches",
        "--pooling=max --model=nhwc_reshape --microbatches=2",
        {},
    ),
    ("jax avg batch 512 in 8 micro-batches", "--batch=512 --microbatches=8", {}),
    ("jax avg 2 micro-batches, unrolled", "--microbatches=2 --unroll", {}),
    ("jax avg 4 micro-batches, unrolled", "--microbatches=4 --unroll", {}),
    (
        "jax max reshape pooling, 2 micro-batches, unrolled",
        "--pooling=max --model=nhwc_reshape --microbatches=2 --unroll",
        {},
    ),
    (
        "jax avg bfloat16, reshape pooling, YNNPACK eltwise+reduce off",
        "--dtype=bfloat16 --model=nhwc_reshape",
        {"XLA_FLAGS": NO_YNN_ELTWISE},
    ),
]
SINGLE_THREADED_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _environment(arguments: str, extra: dict[str, str]) -> dict[str, str]:
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    environment.pop("XLA_FLAGS", None)
    for key, value in extra.items():
        environment[key] = value
    if "--threads" not in arguments:
        flags = environment.get("XLA_FLAGS", "")
        environment["XLA_FLAGS"] = f"{flags} {SINGLE_THREADED_XLA}".strip()
    return environment


def run_experiments(args) -> None:
    """Runs the selected experiments `args.rounds` times and prints and saves the table."""
    results: dict[str, list[dict]] = {name: [] for name, _, _ in EXPERIMENTS}
    selected = [e for e in EXPERIMENTS if not args.only or any(s in e[0] for s in args.only)]
    for round_number in range(args.rounds):
        for name, arguments, extra in selected:
            environment = _environment(arguments, extra)
            if "--threads" not in arguments:
                arguments += " --threads=1"
            command = [sys.executable, CNN_STEP, *arguments.split(), f"--steps={args.steps}"]
            output = subprocess.run(
                command, env=environment, capture_output=True, text=True, check=False
            )
            if output.returncode != 0:
                print(f"{name}: failed\n{output.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(output.stdout.strip().splitlines()[-1])
            results[name].append(result)
            print(f"round {round_number + 1} {name:<42} {result['best_ms']:8.1f} ms", flush=True)
    rows = []
    for name, arguments, extra in selected:
        if not results[name]:
            continue
        batch = next((int(a.split("=")[1]) for a in arguments.split() if "--batch" in a), 128)
        best = min(r["best_ms"] for r in results[name])
        rows.append(
            {
                "experiment": name,
                "arguments": arguments,
                "environment": extra,
                "best_ms": round(best, 2),
                "best_ms_per_128": round(best * 128 / batch, 2),
                "median_ms": round(statistics.median(r["median_ms"] for r in results[name]), 2),
                "cores_used": round(statistics.mean(r["cores_used"] for r in results[name]), 2),
                "runs": len(results[name]),
            }
        )
    print("\n| experiment | best ms/step | median ms/step | ms per 128 examples | cores used |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['experiment']} | {row['best_ms']:.1f} | {row['median_ms']:.1f} "
            f"| {row['best_ms_per_128']:.1f} | {row['cores_used']:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"load_average": os.getloadavg(), "rows": rows}, file, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="experiments whose names contain these")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--out", help="write the rows as JSON here")
    run_experiments(parser.parse_args())


if __name__ == "__main__":
    main()
