"""The Fashion-MNIST CNN train step, timed and taken apart against PyTorch (see NOTES.md).

One measurement in this process (XLA flags must be set in the environment beforehand);
prints a JSON line with the best and median ms per step and the cores kept busy:
    python tests/benchmarks/cnn_step.py --framework=jax --pooling=avg
    python tests/benchmarks/cnn_step.py --framework=torch --threads=1
    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
        python tests/benchmarks/cnn_step.py --profile    # per-HLO-op time of the compiled step
`cnn_components.py` times each layer alone; `cnn_experiments.py` runs every experiment.
"""

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

IMAGE_SHAPE = (28, 28, 1)  # Fashion-MNIST
NUM_CLASSES = 10
LEARNING_RATE = 1e-3  # adam, no weight decay: the "plain" step


def best_seconds_per_step(run_steps, steps: int, repeats: int) -> tuple[float, float]:
    """(best, median) seconds per step over `repeats` timed runs of `steps` steps.

    `run_steps(n)` runs n steps and waits for the last one. The best run is the least
    disturbed by other processes on this shared machine; the median shows the spread.
    """
    run_steps(3)  # warm-up: compilation, allocator, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        times.append((time.perf_counter() - start) / steps)
    times.sort()
    return times[0], times[len(times) // 2]


def cores_used(function) -> tuple[object, float]:
    """(function(), process CPU seconds / wall seconds while it ran): the cores it kept busy."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, (time.process_time() - cpu) / (time.perf_counter() - wall)


# ----------------------------------------------------------------------------------- JAX


def _flax_model(pooling: str):
    from experiments.image_classification.models.cnn import CNN

    return CNN(num_classes=NUM_CLASSES, features=(32, 64), pooling=pooling, dense_sizes=(256,))


def _functional_forward(layout: str, pool_impl: str, pooling: str, patches: tuple[bool, ...]):
    """A hand-written twin of the CNN: `layout` NHWC or NCHW, pooling by reduce_window,
    by reshape (a mean or max over explicit 2x2 axes), or a stride-2 convolution; the
    convolutions where `patches` is true are 3x3 patches (9 shifted slices) times a matrix."""
    import jax
    import jax.numpy as jnp

    spatial = (1, 2) if layout == "NHWC" else (2, 3)
    dimension_numbers = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
    channel_axis = 3 if layout == "NHWC" else 1

    def conv(x, kernel, bias, stride, as_patches):
        if as_patches:  # NHWC, stride 1, SAME: [b, h, w, 9 * c] @ [9 * c, features]
            assert layout == "NHWC" and stride == 1
            _, height, width, _ = x.shape
            padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            shifted = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
            return jnp.concatenate(shifted, axis=-1) @ kernel.reshape(-1, kernel.shape[-1]) + bias
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), "SAME", dimension_numbers=dimension_numbers
        )
        return y + bias.reshape([-1 if axis == channel_axis else 1 for axis in range(4)])

    def pool(x):
        if pool_impl == "reduce_window":
            window = tuple(2 if axis in spatial else 1 for axis in range(4))
            if pooling == "max":
                return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") / 4
        b, *rest = x.shape
        if layout == "NHWC":
            h, w, c = rest
            x = x.reshape(b, h // 2, 2, w // 2, 2, c)
        else:
            c, h, w = rest
            x = x.reshape(b, c, h // 2, 2, w // 2, 2)
        axes = (2, 4) if layout == "NHWC" else (3, 5)
        return x.max(axis=axes) if pooling == "max" else x.mean(axis=axes)

    stride = 2 if pool_impl == "strided_conv" else 1

    def forward(params, images):
        x = images if layout == "NHWC" else images.transpose(0, 3, 1, 2)
        for name, as_patches in zip(("conv0", "conv1"), patches, strict=True):
            x = jax.nn.relu(
                conv(x, params[name]["kernel"], params[name]["bias"], stride, as_patches)
            )
            if pool_impl != "strided_conv":
                x = pool(x)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])
        return x @ params["dense1"]["kernel"] + params["dense1"]["bias"]

    def init(rng):
        keys = jax.random.split(rng, 4)
        hwio = lambda key, i, o: jax.random.normal(key, (3, 3, i, o)) * (9 * i) ** -0.5
        kernel = lambda key, i, o: (
            hwio(key, i, o) if layout == "NHWC" else hwio(key, i, o).transpose(3, 2, 0, 1)
        )
        flat = 64 * 7 * 7
        return {
            "conv0": {"kernel": kernel(keys[0], 1, 32), "bias": jnp.zeros(32)},
            "conv1": {"kernel": kernel(keys[1], 32, 64), "bias": jnp.zeros(64)},
            "dense0": {
                "kernel": jax.random.normal(keys[2], (flat, 256)) * flat**-0.5,
                "bias": jnp.zeros(256),
            },
            "dense1": {
                "kernel": jax.random.normal(keys[3], (256, NUM_CLASSES)) * 256**-0.5,
                "bias": jnp.zeros(NUM_CLASSES),
            },
        }

    return init, forward


def jax_step(args):
    """(compiled step, initial carry, batch) for `args`; the step maps carry -> carry."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.batch, *IMAGE_SHAPE), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32))
    if args.model == "flax":
        model = _flax_model(args.pooling)
        params = model.init(jax.random.PRNGKey(0), images[:1], train=False)["params"]
        forward = lambda p, x: model.apply({"params": p}, x, train=True)
    else:
        layout, pool_impl = args.model.split("_", 1)
        patches = {"none": (False, False), "first": (True, False), "all": (True, True)}
        init, forward = _functional_forward(
            layout.upper(), pool_impl, args.pooling, patches[args.patches]
        )
        params = init(jax.random.PRNGKey(0))
    compute_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    def loss_fn(params, images, labels):
        # Mixed precision: float32 master weights, the forward and backward in compute_dtype.
        cast = jax.tree.map(lambda leaf: leaf.astype(compute_dtype), params)
        logits = forward(cast, images.astype(compute_dtype)).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def value_and_grad(params, images, labels):
        """The loss and gradient of the whole batch, in `args.microbatches` sequential parts
        (a `lax.scan`) whose mean equals the whole-batch mean exactly up to rounding."""
        if args.microbatches == 1:
            return jax.value_and_grad(loss_fn)(params, images, labels)
        split = lambda x: x.reshape(args.microbatches, -1, *x.shape[1:])

        def accumulate(totals, microbatch):
            loss, grads = jax.value_and_grad(loss_fn)(params, *microbatch)
            return jax.tree.map(jnp.add, totals, (loss, grads)), None

        totals = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        if args.unroll:  # one program with the parts side by side, no loop
            for part in zip(split(images), split(labels), strict=True):
                totals, _ = accumulate(totals, part)
        else:
            totals, _ = jax.lax.scan(accumulate, totals, (split(images), split(labels)))
        return jax.tree.map(lambda total: total / args.microbatches, totals)

    optimizer = optax.adam(LEARNING_RATE)
    if args.part == "forward":
        step = lambda carry: (carry[0], carry[1], loss_fn(carry[0], images, labels))
    elif args.part == "grad":

        def step(carry):
            loss, grads = value_and_grad(carry[0], images, labels)
            return carry[0], grads, loss  # grads are returned so they are not optimized away

    else:

        def step(carry):
            params, opt_state, _ = carry
            loss, grads = value_and_grad(params, images, labels)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

    second = optimizer.init(params) if args.part == "step" else jax.tree.map(jnp.zeros_like, params)
    carry = (params, second, jnp.zeros(()))
    compiled = jax.jit(step, donate_argnums=0).lower(carry).compile()
    return compiled, carry


def measure_jax(args) -> dict:
    import jax

    compiled, carry = jax_step(args)
    state = {"carry": carry}

    def run_steps(count):
        for _ in range(count):
            state["carry"] = compiled(state["carry"])
        jax.block_until_ready(state["carry"])

    (best, median), cores = cores_used(
        lambda: best_seconds_per_step(run_steps, args.steps, args.repeats)
    )
    flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
    return {
        "best_ms": best * 1e3,
        "median_ms": median * 1e3,
        "cores_used": round(cores, 2),
        "gflop_per_step": flops / 1e9,
    }


def profile_jax(args) -> dict:
    """Per-HLO-instruction time from a jax.profiler trace of the compiled step.

    Needs XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true. Thunks run on several threads,
    so times are summed over threads (CPU milliseconds per step, not wall time).
    """
    import collections
    import glob
    import tempfile

    import jax

    compiled, carry = jax_step(args)
    for _ in range(3):
        carry = compiled(carry)
    jax.block_until_ready(carry)
    trace_dir = tempfile.mkdtemp(prefix="cnn_step_trace_")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.steps):
            carry = compiled(carry)
        jax.block_until_ready(carry)
    trace_file = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    milliseconds = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(trace_file).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    milliseconds[event.name] += event.duration_ns / 1e6 / args.steps
    hlo = compiled.as_text()
    return {
        "cpu_ms_per_step": sum(milliseconds.values()),
        "ops": [
            {"op": name, "cpu_ms": round(ms, 3), "source": _op_source(hlo, name)}
            for name, ms in milliseconds.most_common(args.top)
        ],
    }


def _op_source(hlo_text: str, instruction: str) -> str:
    """The jax op_name metadata of an HLO instruction (or of the fusion it calls)."""
    for line in hlo_text.splitlines():
        if line.strip().startswith(f"%{instruction} ") or line.strip().startswith(
            f"ROOT %{instruction} "
        ):
            if 'op_name="' in line:
                return line.split('op_name="', 1)[1].split('"', 1)[0]
            return line.split("=", 1)[1].split("(", 1)[0].strip()[:60]
    return ""


# --------------------------------------------------------------------------------- PyTorch


def measure_torch(args) -> dict:
    import torch
    import torch.nn.functional as F

    from tests.benchmarks import torch_models

    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(0)
    model = torch_models.CNN(
        IMAGE_SHAPE,
        NUM_CLASSES,
        {
            "features": (32, 64),
            "kernel_size": (3, 3),
            "pooling": args.pooling,
            "dense_sizes": (256,),
        },
    )
    images = torch.randn(args.batch, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2])
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    use_bfloat16 = args.dtype == "bfloat16"

    def run_steps(count):
        for _ in range(count):
            with (
                torch.set_grad_enabled(args.part != "forward"),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bfloat16),
            ):
                loss = F.cross_entropy(model(images), labels)
            if args.part != "forward":
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if args.part == "step":
                optimizer.step()

    (best, median), cores = cores_used(
        lambda: best_seconds_per_step(run_steps, args.steps, args.repeats)
    )
    return {"best_ms": best * 1e3, "median_ms": median * 1e3, "cores_used": round(cores, 2)}


def profile_torch(args) -> dict:
    """Per-operator CPU time of the PyTorch step from torch.profiler (self time, summed)."""
    import torch

    from tests.benchmarks import torch_models

    torch.set_num_threads(args.threads or os.cpu_count())
    model = torch_models.CNN(
        IMAGE_SHAPE,
        NUM_CLASSES,
        {
            "features": (32, 64),
            "kernel_size": (3, 3),
            "pooling": args.pooling,
            "dense_sizes": (256,),
        },
    )
    images = torch.randn(args.batch, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2])
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "ops": [
            {"op": event.key, "self_ms": round(event.self_cpu_time_total / 1e3 / args.steps, 3)}
            for event in events[: args.top]
        ]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
    parser.add_argument("--pooling", choices=("avg", "max"), default="avg")
    parser.add_argument(
        "--model",
        default="flax",
        help="flax (models/cnn.py) or {nhwc,nchw}_{reduce_window,reshape,strided_conv}",
    )
    parser.add_argument(
        "--patches",
        choices=("none", "first", "all"),
        default="none",
        help="functional NHWC models: which convolutions are patches @ matrix",
    )
    parser.add_argument("--part", choices=("forward", "grad", "step"), default="step")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--microbatches", type=int, default=1, help="jax: gradient of the batch in parts"
    )
    parser.add_argument("--unroll", action="store_true", help="micro-batches without lax.scan")
    parser.add_argument(
        "--threads", type=int, default=0, help="PyTorch threads (0: all cores); XLA: XLA_FLAGS"
    )
    parser.add_argument("--channels-last", action="store_true", help="PyTorch channels_last")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--profile", action="store_true", help="per-op times instead")
    parser.add_argument("--top", type=int, default=25, help="ops shown by --profile")
    args = parser.parse_args()
    if args.framework == "torch":
        result = profile_torch(args) if args.profile else measure_torch(args)
    else:
        result = profile_jax(args) if args.profile else measure_jax(args)
    print(json.dumps(result, indent=1 if args.profile else None))


if __name__ == "__main__":
    main()
