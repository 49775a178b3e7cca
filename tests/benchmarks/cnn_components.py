"""Each layer of the CNN step alone, forward and forward + backward, in JAX and PyTorch.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        .venv/bin/python tests/benchmarks/cnn_components.py --framework=jax --threads=1
    .venv/bin/python tests/benchmarks/cnn_components.py --framework=torch --threads=1
"""

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from tests.benchmarks.cnn_step import best_seconds_per_step  # noqa: E402


# Each layer of the CNN alone at the step's shapes: (name, input shape, parameter shapes).
# Convolution kernels are HWIO; the PyTorch side transposes them to OIHW.
def _layers(batch: int):
    return [
        ("conv0 3x3 1->32 +relu", (batch, 28, 28, 1), {"kernel": (3, 3, 1, 32), "bias": (32,)}),
        ("pool0 2x2", (batch, 28, 28, 32), {}),
        ("conv1 3x3 32->64 +relu", (batch, 14, 14, 32), {"kernel": (3, 3, 32, 64), "bias": (64,)}),
        ("pool1 2x2", (batch, 14, 14, 64), {}),
        ("dense0 3136->256 +relu", (batch, 3136), {"kernel": (3136, 256), "bias": (256,)}),
        ("dense1 256->10", (batch, 256), {"kernel": (256, 10), "bias": (10,)}),
    ]


def measure_components(args) -> dict:
    """Forward and forward+backward time of each layer alone (gradients for the parameters,
    and for the input except at the first layer, as in the train step)."""
    results = {}
    for name, input_shape, parameter_shapes in _layers(args.batch):
        kind = name.split()[0][:-1]
        if args.framework == "jax":
            forward, backward = _jax_component(kind, args.pooling, input_shape, parameter_shapes)
        else:
            forward, backward = _torch_component(kind, args, input_shape, parameter_shapes)
        best_forward, _ = best_seconds_per_step(forward, args.steps, args.repeats)
        best_both, _ = best_seconds_per_step(backward, args.steps, args.repeats)
        results[name] = {"forward_ms": best_forward * 1e3, "forward_backward_ms": best_both * 1e3}
    return results


def _jax_component(kind, pooling, input_shape, parameter_shapes):
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.PRNGKey(0), input_shape)
    params = {k: jnp.full(shape, 0.01) for k, shape in parameter_shapes.items()}
    window = (1, 2, 2, 1)

    def layer(params, x):
        if kind == "conv":
            y = jax.lax.conv_general_dilated(
                x, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return jax.nn.relu(y + params["bias"])
        if kind == "pool" and pooling == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
        if kind == "pool":
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") / 4
        y = x @ params["kernel"] + params["bias"]
        return jax.nn.relu(y) if params["kernel"].shape[1] > 10 else y

    first = input_shape[-1] == 1
    forward = jax.jit(layer)

    def both(params, x):
        y, pullback = jax.vjp(layer, params, x)
        grads = pullback(jnp.ones_like(y))
        return grads[0] if first else grads

    both = jax.jit(both)

    def run(function):
        def run_steps(count):
            for _ in range(count):
                out = function(params, x)
            jax.block_until_ready(out)

        return run_steps

    return run(forward), run(both)


def _torch_component(kind, args, input_shape, parameter_shapes):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads or os.cpu_count())
    channels_first = len(input_shape) == 4
    shape = (input_shape[0], input_shape[3], *input_shape[1:3]) if channels_first else input_shape
    x = torch.randn(shape, requires_grad=input_shape[-1] != 1)
    params = {}
    for key, param_shape in parameter_shapes.items():
        if key == "kernel" and kind == "conv":
            param_shape = (param_shape[3], param_shape[2], *param_shape[:2])
        if key == "kernel" and kind == "dense":
            param_shape = param_shape[::-1]
        params[key] = torch.full(param_shape, 0.01, requires_grad=True)

    def layer():
        if kind == "conv":
            return F.relu(F.conv2d(x, params["kernel"], params["bias"], padding=1))
        if kind == "pool":
            return (F.max_pool2d if args.pooling == "max" else F.avg_pool2d)(x, 2)
        y = F.linear(x, params["kernel"], params["bias"])
        return F.relu(y) if params["kernel"].shape[0] > 10 else y

    def forward(count):
        with torch.no_grad():
            for _ in range(count):
                layer()

    def both(count):
        for _ in range(count):
            y = layer()
            y.backward(torch.ones_like(y))

    return forward, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
    parser.add_argument("--pooling", choices=("avg", "max"), default="avg")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: all cores)")
    parser.add_argument("--steps", type=int, default=20, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    print(json.dumps(measure_components(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
