"""Mixed precision, gradient accumulation, several steps per dispatch and per-config XLA flags."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.image_classification.models import cnn, mlp, resnet
from experiments.language_modeling.models.lstm import LSTMLM
from experiments.language_modeling.models.transformer import TransformerLM
from experiments.regression import models as regression_models
from experiments.seq2seq.models import lstm, transformer
from research.core import config as config_lib
from research.core import precision, steps
from research.core.task import Task
from research.runtime import parallel, workdir
from tests import helpers


class TokenModel(nn.Module):
    """Logits `[batch, length, 5]` for token ids `[batch, length]`."""

    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, tokens, *, train):
        embedded = nn.Embed(7, 8, dtype=self.dtype, param_dtype=self.param_dtype)(tokens)
        return nn.Dense(5, dtype=self.dtype, param_dtype=self.param_dtype)(jnp.tanh(embedded))


def _token_loss(logits, batch):
    """Per-example cross-entropy summed over real tokens, weighted by their count."""
    mask = (batch["tokens"] > 0).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return (losses * mask).sum(-1), mask.sum(-1)


TOKEN_TASK = Task(
    load_data=None,
    create_model=None,
    model_inputs=lambda batch: (batch["tokens"],),
    loss=_token_loss,
    metric_sums=lambda logits, batch: {"loss": _token_loss(logits, batch)[0]},
    summarize=lambda sums: sums,
)


def _token_batch(rows=8, length=6):
    """Rows of very different lengths, so micro-batches hold different token counts."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 7, (rows, length)).astype(np.int32)
    lengths = np.array([1, 6, 2, 5, 6, 1, 3, 4])[:rows]
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return {"tokens": tokens, "labels": rng.integers(0, 5, (rows, length)).astype(np.int32)}


OPTIMIZER = optax.sgd(0.5)


@functools.cache
def _compiled_step(model, settings):
    return jax.jit(
        functools.partial(
            steps.train_step, model=model, task=TOKEN_TASK, optimizer=OPTIMIZER,
            learning_rate_fn=lambda step: 0.5, **dict(settings),
        )
    )  # fmt: skip


def _one_step(batch, model=None, loss_scale=None, **settings):
    """(initial state, state after one step, step outputs) of `train_step` with `settings`."""
    model = model or TokenModel()
    state = steps.create_train_state(
        jax.random.PRNGKey(0), model, TOKEN_TASK, {k: v[:1] for k, v in batch.items()}, OPTIMIZER
    )
    if loss_scale is not None:
        state = state.replace(loss_scale=loss_scale)
    step = _compiled_step(model, tuple(sorted(settings.items())))
    mesh = parallel.make_mesh({})
    rng = parallel.put_replicated(jax.random.PRNGKey(1), mesh)
    new_state, outputs = step(
        parallel.put_replicated(state, mesh), parallel.put_batch(batch, mesh), rng
    )
    return state, parallel.to_host(new_state), parallel.to_host(outputs)


def _leaves(state):
    return jax.tree.leaves(state.params)


def test_gradient_accumulation_equals_one_pass_with_token_weights():
    batch = _token_batch()
    initial, expected, expected_outputs = _one_step(batch)
    assert not np.allclose(_leaves(initial)[0], _leaves(expected)[0])  # the step moved them
    for unroll in (False, True):
        _, accumulated, outputs = _one_step(batch, grad_accum_steps=4, grad_accum_unroll=unroll)
        for got, want in zip(_leaves(accumulated), _leaves(expected), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert outputs["sums"]["loss"] == pytest.approx(expected_outputs["sums"]["loss"], 1e-6)


def test_float16_overflow_skips_the_step_and_halves_the_loss_scale():
    batch = _token_batch()
    model = TokenModel(dtype=jnp.float16)
    huge = {"scale": jnp.float32(2.0**40), "finite_steps": jnp.int32(7)}
    before, after, outputs = _one_step(batch, model=model, loss_scale=huge)
    assert after.loss_scale["scale"] == 2.0**39 and after.loss_scale["finite_steps"] == 0
    assert jax.tree.all(jax.tree.map(np.array_equal, after.params, before.params))
    assert bool(outputs["diagnostics"]["all_finite"])  # expected while the scale adapts
    fine = {"scale": jnp.float32(2.0**10), "finite_steps": jnp.int32(7)}
    before, after, _ = _one_step(batch, model=model, loss_scale=fine)
    assert after.loss_scale["finite_steps"] == 8 and after.loss_scale["scale"] == 2.0**10
    assert jax.tree.leaves(after.params)[0].dtype == jnp.float32  # master weights
    _, unscaled, _ = _one_step(batch)  # float32, no scaling: float16 agrees to its precision
    for got, want, old in zip(_leaves(after), _leaves(unscaled), _leaves(before), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3)
        assert not np.array_equal(got, old)


MODELS = [
    (cnn.CNN, dict(num_classes=3, features=(4,), dense_sizes=(8,)), ((2, 8, 8, 1),)),
    (mlp.MLP, dict(num_classes=3, hidden_sizes=(8,)), ((2, 5),)),
    (resnet.ResNet, dict(num_classes=3, stage_sizes=(1,), width=4), ((2, 8, 8, 3),)),
    (regression_models.MLP, dict(hidden_sizes=(8,)), ((2, 5),)),
    (transformer.Transformer, dict(input_vocab_size=9, target_vocab_size=9, num_layers=1,
     width=8, num_heads=2, mlp_width=16), ((2, 4), (2, 3))),
    (lstm.LSTMSeq2Seq, dict(input_vocab_size=9, target_vocab_size=9, embedding_size=8,
     hidden_size=8, num_layers=1), ((2, 4), (2, 3))),
    (TransformerLM, dict(vocab_size=9, num_layers=1, width=8, num_heads=2, mlp_width=16,
     max_length=4), ((2, 4),)),
    (LSTMLM, dict(vocab_size=9, embedding_size=8, hidden_size=8, num_layers=1), ((2, 4),)),
]  # fmt: skip
# Outputs these models return in float32 by design: regression predictions in the target's
# units, and language models' logits (a softmax over the vocabulary).
FLOAT32_OUTPUTS = (regression_models.MLP, TransformerLM, LSTMLM)
TOKEN_MODELS = (transformer.Transformer, lstm.LSTMSeq2Seq, TransformerLM, LSTMLM)


@pytest.mark.parametrize(
    "model_class, fields, shapes", MODELS, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_model_computes_in_its_dtype_and_stores_its_param_dtype(model_class, fields, shapes):
    model = model_class(**fields, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    inputs = [
        jnp.ones(shape, jnp.int32) if model_class in TOKEN_MODELS
        else jnp.ones(shape, jnp.float32)
        for shape in shapes
    ]  # fmt: skip
    # Shapes and dtypes only (jax.eval_shape): nothing is compiled or run.
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {
        jnp.dtype(jnp.bfloat16)
    }
    outputs = jax.eval_shape(lambda v: model.apply(v, *inputs, train=False), variables)
    expected = jnp.float32 if model_class in FLOAT32_OUTPUTS else jnp.bfloat16
    assert outputs.dtype == jnp.dtype(expected)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("dtype", "float8", ["config.dtype", "bfloat16"]),
        ("param_dtype", "int8", ["config.param_dtype", "float32"]),
        ("grad_accum_steps", 3, ["config.batch_size=128", "micro-batches", "multiple of 3"]),
        ("steps_per_dispatch", 3, ["config.num_train_steps=1000", "multiple"]),
        ("xla_flags", "xla_cpu_foo", ["config.xla_flags", "'--'"]),
        ("train_order", "random", ["config.train_order 'random'", "numpy, hash"]),
    ],
)
def test_bad_scaling_settings_are_one_sentence(key, value, words):
    config = config_lib.base_config()
    config.task, config[key] = "regression", value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, device_count=1)
    assert all(word in str(error.value) for word in words), str(error.value)


def _curve(directory) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in workdir.TIMING_METRICS}
        for r in workdir.read_metrics(directory)
    ]


# lax.scan (unroll False) is bitwise for this MLP (docs/scaling.md). "device": the training split on
# the device, each batch gathered inside the compiled step from indices the host sends, or
# in the "hash" order from indices each device computes itself. The "hash" run at one step
# per call reads its batches on the host: the device draws the same rows.
@pytest.mark.parametrize(
    "unroll, pipeline, order",
    [(False, "memory", "numpy"), (False, "device", "numpy"), (False, "device", "hash")],
)
def test_steps_per_dispatch_is_bitwise_equal_to_one_step_per_call(
    data_dir, tmp_path, unroll, pipeline, order
):
    path = os.path.join(helpers.REPO_ROOT, "experiments/regression/configs/diabetes_mlp.py")
    # 12 steps of 32 examples cross into the second epoch of the 353 training examples.
    settings = dict(num_train_steps=12, log_every_steps=4, eval_every_steps=8,
                    checkpoint_every_steps=8, warmup_steps=2, data_dir=data_dir,
                    train_order=order)  # fmt: skip
    one = helpers.run_experiment(helpers.load_config(path, **settings), tmp_path / "one")
    config = helpers.load_config(
        path, steps_per_dispatch=4, steps_per_dispatch_unroll=unroll, input_pipeline=pipeline,
        **settings,
    )  # fmt: skip
    several = helpers.run_experiment(config, tmp_path / "four")
    assert several["params_sha256"] == one["params_sha256"]
    # Logs and evaluations at the same steps, with the same values.
    assert _curve(tmp_path / "four") == _curve(tmp_path / "one")
    assert [r["step"] for r in _curve(tmp_path / "four")] == [4, 8, 8, 12, 12]


@pytest.mark.parametrize("order", ["numpy", "hash"])
def test_device_resident_data_on_two_devices_equals_host_batches(order, data_dir, tmp_path):
    """Each device gathers its own rows of the global batch from its copy of the split (in
    the "hash" order it also finds which rows those are)."""
    common = (
        "--config=experiments/image_classification/configs/mnist1d_cnn.py",
        f"--config.train_order={order}",
        f"--config.data_dir={data_dir}", "--config.num_train_steps=8",
        "--config.log_every_steps=4", "--config.eval_every_steps=8",
        "--config.checkpoint_every_steps=8", "--config.model.features=(8,)",
        "--config.model.dense_sizes=(16,)",
    )  # fmt: skip
    summaries = {}
    for pipeline in ("memory", "device"):
        result = helpers.launch(
            *common, f"--workdir={tmp_path / pipeline}", f"--config.input_pipeline={pipeline}",
            "--config.steps_per_dispatch=4", devices=2,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        summaries[pipeline] = json.loads((tmp_path / pipeline / "summary.json").read_text())
    assert summaries["device"]["params_sha256"] == summaries["memory"]["params_sha256"]
    assert _curve(tmp_path / "device") == _curve(tmp_path / "memory")


def test_config_xla_flags_reach_the_backend_and_run_json(data_dir, tmp_path):
    result = helpers.launch(
        "--config=experiments/regression/configs/linear_synthetic.py",
        f"--workdir={tmp_path}", f"--config.data_dir={data_dir}", "--config.num_train_steps=4",
        "--config.log_every_steps=2", "--config.eval_every_steps=4",
        "--config.checkpoint_every_steps=4", "--config.warmup_steps=0", "--config.batch_size=32",
        "--config.dtype=bfloat16",
        "--config.xla_flags=--xla_force_host_platform_device_count=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["devices"]["device_count"] == 2  # the test environment asks for 1
    assert record["xla_flags"].endswith("--xla_force_host_platform_device_count=2")
    assert record["config_xla_flags"] == "--xla_force_host_platform_device_count=2"
    assert record["precision"]["dtype"] == "bfloat16"
    assert precision.DTYPES[record["precision"]["param_dtype"]] == jnp.float32
