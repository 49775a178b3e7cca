"""Load test of `python -m experiments.serve`: throughput and latency with and without batching.

`python benchmarks/serve_load.py --model=DIR --instances=FILE.json [--clients=32]` starts the
server twice (batches up to 32, then 1), sends one-instance requests from concurrent clients for
`--seconds`, and prints requests/s, p50 and p99 latency; `--out` appends the results as JSON.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return server.getsockname()[1]


def _start_server(model: str, max_batch_size: int, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"--model={model}", f"--port={port}",
         f"--max_batch_size={max_batch_size}", "--max_queue=100000"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}") from None
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not start within 600 s")


async def _load(port: int, instances: list, clients: int, seconds: float) -> dict:
    """`clients` loops each sending one instance per request until `seconds` have passed."""
    latencies, errors = [], 0
    url = f"http://127.0.0.1:{port}/v1/predict"
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def client(number: int) -> None:
            nonlocal errors
            index = number
            while time.perf_counter() < end:
                body = {"instances": [instances[index % len(instances)]]}
                start = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)
                index += clients

        start = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - start
    latencies = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="an exported directory")
    parser.add_argument("--instances", required=True, help='a JSON file {"instances": [...]}')
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--name", default=None, help="the benchmark's name in the results")
    parser.add_argument("--out", default=None, help="a JSON file to add the results to")
    args = parser.parse_args()
    with open(args.instances) as file:
        instances = json.load(file)["instances"]
    results = {}
    for label, max_batch_size in (("batched", 32), ("unbatched", 1)):
        port = _free_port()
        server = _start_server(args.model, max_batch_size, port)
        try:
            results[label] = asyncio.run(_load(port, instances, args.clients, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=120)
        row = results[label]
        print(f"{label:>9}: {row['requests_per_second']:8.1f} requests/s  p50 "
              f"{row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
              f"({row['requests']} requests, {row['errors']} errors)", flush=True)  # fmt: skip
    speedup = (
        results["batched"]["requests_per_second"] / results["unbatched"]["requests_per_second"]
    )
    print(f"batching: {speedup:.1f}x the unbatched throughput at {args.clients} clients")
    record = {
        "name": args.name or os.path.basename(os.path.abspath(args.model)),
        "clients": args.clients,
        "seconds": args.seconds,
        **results,
        "speedup": speedup,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    if args.out:
        existing = []
        if os.path.exists(args.out):
            with open(args.out) as file:
                existing = json.load(file)
        with open(args.out, "w") as file:
            json.dump(existing + [record], file, indent=1)
            file.write("\n")


if __name__ == "__main__":
    main()
