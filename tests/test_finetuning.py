"""Fine-tuning: --init_from restores by path, config.init.reinitialize and absent parameters
start fresh, config.frozen parameters never change, learning-rate multipliers act like
separate optimizers, and class subsets select the data they name."""

import json
import logging
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import experiments
from experiments.image_classification import multi_label
from experiments.image_classification import task as image_task
from research.core import config as config_lib
from research.core import optimizers, trainer
from research.core.config import ConfigError, base_config
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment

MLP = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_mlp.py")
SHORT = {
    "num_train_steps": 4,
    "eval_every_steps": 4,
    "log_every_steps": 2,
    "checkpoint_every_steps": 4,
    "batch_size": 32,
    "warmup_steps": 0,
}


def _mlp_config(data_dir, hidden_sizes, **changes):
    config = load_config(MLP, **{**SHORT, **changes})
    config.model.hidden_sizes = hidden_sizes
    config.data_dir = data_dir
    return config


def _saved_params(workdir, step):
    """The parameters a run saved, read by orbax alone (no code of ours)."""
    with ocp.StandardCheckpointer() as reader:
        return reader.restore(os.path.join(workdir, "checkpoints", str(step), "default"))["params"]


def _flat(params) -> dict[str, np.ndarray]:
    return {
        "/".join(str(key.key) for key in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


@pytest.fixture(scope="module")
def source_run(data_dir, tmp_path_factory):
    """A 4-step run of a 2-hidden-layer MLP on MNIST-1D classes 0-4 (head: 16 -> 5)."""
    workdir = tmp_path_factory.mktemp("source")
    run_experiment(_mlp_config(data_dir, (16, 16), classes=(0, 1, 2, 3, 4)), workdir)
    return str(workdir)


def _tree_snapshot(folder) -> dict:
    return {
        path: os.stat(os.path.join(root, path)).st_mtime_ns
        for root, _, files in os.walk(folder)
        for path in files
    }


def test_fine_tuning_restores_by_path_reinitializes_and_freezes(
    data_dir, source_run, tmp_path, caplog
):
    # One more hidden layer and 3 classes: Dense_2 (the source's head, 16x5) becomes a hidden
    # layer (16x16) initialized fresh, Dense_3 (the new head) is absent from the source.
    config = _mlp_config(data_dir, (16, 16, 16), classes=(5, 6, 7), train_examples_per_class=20)
    config.init.reinitialize = ("Dense_2/.*",)
    config.frozen = ("Dense_0/.*",)
    task = experiments.get_task(config)
    before_source = _tree_snapshot(source_run)
    with caplog.at_level(logging.INFO):
        run = trainer.setup(config, str(tmp_path / "tuned"), task, init_from=source_run)
    run.close()
    fresh = trainer.setup(config, str(tmp_path / "fresh"), task)
    fresh.close()
    initial, fresh_params = _flat(run.state.params), _flat(fresh.state.params)
    source = _flat(_saved_params(source_run, 4))
    for name in ("Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias"):
        np.testing.assert_array_equal(initial[name], source[name])
        assert not np.array_equal(initial[name], fresh_params[name])
    for name in ("Dense_2/kernel", "Dense_2/bias", "Dense_3/kernel", "Dense_3/bias"):
        np.testing.assert_array_equal(initial[name], fresh_params[name])
    log = caplog.text
    assert "restored 4 arrays (Dense_0/bias, Dense_0/kernel, Dense_1/bias, Dense_1/kernel)" in log
    assert "config.init.reinitialize: 2 (Dense_2/bias, Dense_2/kernel)" in log
    assert "so initialized fresh: Dense_3/bias, Dense_3/kernel" in log

    summary = trainer.train_and_evaluate(
        config, str(tmp_path / "tuned"), task, init_from=source_run
    )
    final = _flat(_saved_params(tmp_path / "tuned", 4))
    for name in ("Dense_0/kernel", "Dense_0/bias"):  # frozen: bit-identical after training
        assert final[name].tobytes() == initial[name].tobytes()
    for name in ("Dense_1/kernel", "Dense_2/kernel", "Dense_3/kernel"):
        assert not np.array_equal(final[name], initial[name])
    # Resuming restores the partitioned optimizer state (a finished run is evaluated again),
    # and run.json keeps what the run started from.
    resumed = trainer.train_and_evaluate(config, str(tmp_path / "tuned"), task)
    assert resumed["params_sha256"] == summary["params_sha256"]
    source_summary = json.loads((Path(source_run) / "summary.json").read_text())
    assert workdir_lib.read_run(tmp_path / "tuned")["initialized_from"] == {
        "workdir": source_run,
        "step": 4,
        "params_sha256": source_summary["params_sha256"],
        "reinitialized": ["Dense_2/bias", "Dense_2/kernel"],
        "absent": ["Dense_3/bias", "Dense_3/kernel"],
        "arrays": {"restored": 4, "reinitialized": 2, "absent": 2},
        "parameters": {
            "restored": sum(
                initial[f"Dense_{i}/{k}"].size for i in (0, 1) for k in ("bias", "kernel")
            ),
            "reinitialized": initial["Dense_2/kernel"].size + initial["Dense_2/bias"].size,
            "absent": initial["Dense_3/kernel"].size + initial["Dense_3/bias"].size,
        },
    }
    assert _tree_snapshot(source_run) == before_source  # the source run is only read


def test_shape_mismatch_stops_the_launch_naming_the_path_and_both_shapes(
    data_dir, source_run, tmp_path
):
    config = _mlp_config(data_dir, (16, 16), classes=(5, 6, 7))
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        trainer.setup(config, str(tmp_path / "tuned"), experiments.get_task(config),
                      init_from=source_run)  # fmt: skip
    message = str(error.value)
    assert message.startswith(
        f"--init_from={source_run}: Dense_2/bias is (5,) in its checkpoint of step 4 but (3,) "
        "in this model; add a pattern matching it to config.init.reinitialize"
    )
    assert message.count(". ") == 0
    assert not (tmp_path / "tuned").exists()


def test_a_pattern_that_matches_no_parameter_stops_the_launch(data_dir, tmp_path):
    config = _mlp_config(data_dir, (16,))
    config.frozen = ("Conv_.*",)
    with pytest.raises(ConfigError) as error:
        trainer.setup(config, str(tmp_path / "run"), experiments.get_task(config))
    assert str(error.value) == (
        "config.frozen holds 'Conv_.*', which matches no parameter of this model (its "
        "parameters are Dense_0/bias, Dense_0/kernel, Dense_1/bias, Dense_1/kernel); fix or "
        "remove the pattern."
    )
    assert not (tmp_path / "run").exists()


def test_freezing_every_parameter_is_refused_from_the_command_line(data_dir, tmp_path):
    result = helpers.launch(
        f"--config={MLP}", f"--workdir={tmp_path / 'run'}", f"--config.data_dir={data_dir}",
        "--config.frozen=('Dense_.*',)",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.frozen ('Dense_.*',) freezes every parameter of this model, so nothing "
        "would train; leave at least one parameter out (for example the head)."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"frozen": ("(",)}, "config.frozen holds '(', which is not a regular expression"),
        ({"frozen": "Conv_.*"}, "config.frozen is the string 'Conv_.*'; make it a tuple"),
        ({"init.reinitialize": ("a[",)}, "config.init.reinitialize holds 'a['"),
        ({"learning_rate_multipliers": (("a/.*", 0.0),)}, "holds ('a/.*', 0.0); give"),
        ({"learning_rate_multipliers": ("a/.*",)}, "holds 'a/.*'; give (regular expression"),
    ],
)
def test_bad_parameter_patterns_are_refused_before_anything_runs(changes, words):
    values = {**base_config().to_dict(), "task": "regression"}
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        (values[parents[0]] if parents else values)[leaf] = value
    config = ml_collections.ConfigDict(values)  # any type allowed, as from a config.json
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config, device_count=1)
    assert words in str(error.value) and str(error.value).count(". ") == 0


def test_a_parameter_both_frozen_and_multiplied_is_refused():
    config = _optimizer_config("sgd", frozen=("a/.*",), learning_rate_multipliers=((".*", 2.0),))
    with pytest.raises(
        ConfigError,
        match="a/bias is matched by both config.frozen 'a/.*' and config.learning_rate_mult",
    ):
        config_lib.check_parameter_patterns(config, _params(), {})


def _optimizer_config(name, **changes):
    config = base_config()
    config.update({"optimizer": name, "learning_rate": 0.01, "weight_decay": 1e-2, **changes})
    return config


def _params(seed=0):
    """Parameters (or gradients, scaled) of three layers a, b, c as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    shapes = {
        "a": {"kernel": (3, 4), "bias": (4,)},
        "b": {"kernel": (4, 2)},
        "c": {"kernel": (2, 2)},
    }
    return jax.tree.map(
        lambda shape: rng.normal(size=shape).astype(np.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _gradients(step):
    return jax.tree.map(lambda leaf: 10.0 * leaf, _params(seed=step + 1))


def _state_floats(tree) -> int:
    """The numbers held per parameter (scalars such as step counts left out)."""
    return sum(np.size(leaf) for leaf in jax.tree.leaves(tree) if np.ndim(leaf))


@pytest.mark.parametrize("name", ["adamw", "momentum"])
def test_multipliers_and_frozen_parameters_equal_separate_optimizers(name):
    config = _optimizer_config(name, frozen=("c/.*",), learning_rate_multipliers=(("b/.*", 10.0),))
    optimizer = optimizers.create_optimizer(config)
    params = _params()
    state = optimizer.init(params)
    # Frozen parameters carry no optimizer state: adam keeps 2 numbers per parameter that
    # trains (a, b), momentum 1.
    per_parameter = 2 if name == "adamw" else 1
    assert _state_floats(state) == per_parameter * (
        _state_floats(params) - params["c"]["kernel"].size
    )

    def reference(learning_rate):  # the optimizer written out with optax, one per group
        if name == "adamw":
            return optax.adamw(learning_rate, weight_decay=1e-2, mask=optimizers._is_matrix)
        return optax.chain(optax.add_decayed_weights(1e-2, optimizers._is_matrix),
                           optax.sgd(learning_rate, momentum=0.9))  # fmt: skip

    separate = {"a": reference(0.01), "b": reference(0.1)}
    separate_states = {group: separate[group].init(params[group]) for group in separate}
    for step in range(4):
        grads = _gradients(step)
        updates, state = optimizer.update(grads, state, params)
        for group in separate:
            expected, separate_states[group] = separate[group].update(
                grads[group], separate_states[group], params[group]
            )
            jax.tree.map(
                lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9),
                updates[group], expected,
            )  # fmt: skip
        assert not np.any(np.asarray(updates["c"]["kernel"]))
        params = optax.apply_updates(params, updates)


def test_clipping_ignores_the_gradients_of_frozen_parameters():
    config = _optimizer_config("sgd", weight_decay=0.0, grad_clip_norm=1.0, frozen=("c/.*",))
    optimizer = optimizers.create_optimizer(config)
    params, grads = _params(), _gradients(0)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    trained = {"a": grads["a"], "b": grads["b"]}
    scale = 1.0 / float(optax.global_norm(trained))
    for group in trained:
        jax.tree.map(
            lambda got, grad: np.testing.assert_allclose(got, -0.01 * scale * grad, rtol=1e-6),
            updates[group], grads[group],
        )  # fmt: skip


def test_class_subset_keeps_the_first_examples_of_each_class_relabelled(data_dir):
    def load(**changes):
        config = _mlp_config(data_dir, (16,), **changes)
        return image_task.load_data(config, "")

    everything = load()
    labels = everything.train["label"]
    subset = load(classes=(7, 2), train_examples_per_class=5)
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:5] for c in (7, 2)]))
    np.testing.assert_array_equal(subset.train["inputs"], everything.train["inputs"][expected])
    np.testing.assert_array_equal(subset.train["label"], np.where(labels[expected] == 7, 0, 1))
    test_labels = everything.eval_splits["test"]["label"]
    kept = np.flatnonzero((test_labels == 7) | (test_labels == 2))
    np.testing.assert_array_equal(subset.eval_splits["test"]["inputs"],
                                  everything.eval_splits["test"]["inputs"][kept])  # fmt: skip
    assert subset.info["num_classes"] == 2 and subset.info["original_classes"] == [7, 2]
    # Multi-label targets still describe the original digits (7: >= 5, odd, not in 0689).
    config = _mlp_config(data_dir, (16,), classes=(7, 2), train_examples_per_class=5)
    config.loss, config.labels = "binary_cross_entropy", "digit_attributes"
    attributes = multi_label.load_data(config, "").train["label"]
    np.testing.assert_array_equal(
        attributes, [[1, 0, 0] if c == 7 else [0, 1, 0] for c in labels[expected]]
    )
    with pytest.raises(ConfigError, match=r"config.classes=\(3, 10\) must be distinct labels"):
        load(classes=(3, 10))
    with pytest.raises(ConfigError, match="train_examples_per_class=9999 but class 1 has only"):
        load(classes=(1,), train_examples_per_class=9999)


def test_init_from_a_run_of_another_model_restores_nothing_and_stops(data_dir, tmp_path):
    """From the command line: an MLP launched --init_from a run of another architecture (a
    checkpoint holding an embedding and an LSTM cell) would restore 0 arrays and train from
    scratch while run.json said "initialized_from"; it stops instead."""
    from research.core.steps import TrainState

    other = TrainState(
        step=np.int32(7),
        params={"Embed_0": {"embedding": np.zeros((30, 8), np.float32)},
                "LSTMCell_0": {"kernel": np.zeros((8, 32), np.float32)}},
        model_state={}, opt_state={},
    )  # fmt: skip
    saver = checkpoints.Checkpointer(str(tmp_path / "lstm" / "checkpoints"), keep=1)
    saver.save(7, other)
    saver.close()
    result = helpers.launch(
        f"--config={MLP}", f"--workdir={tmp_path / 'tuned'}", f"--config.data_dir={data_dir}",
        f"--init_from={tmp_path / 'lstm'}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: --init_from={tmp_path / 'lstm'} restored 0 of this model's")
    assert "Embed_0/embedding" in error and "Traceback" not in result.stderr
    assert not (tmp_path / "tuned").exists()


def test_init_from_at_step_reads_that_checkpoint_and_records_it(data_dir, tmp_path):
    source = tmp_path / "source"
    run_experiment(_mlp_config(data_dir, (16, 16), num_train_steps=8), source)
    assert checkpoints.saved_steps(str(source / "checkpoints")) == [4, 8]
    config = _mlp_config(data_dir, (16, 16))
    task = experiments.get_task(config)
    run = trainer.setup(config, str(tmp_path / "tuned"), task, init_from=f"{source}@4")
    run.close()
    record = workdir_lib.read_run(tmp_path / "tuned")["initialized_from"]
    assert record["step"] == 4 and record["workdir"] == str(source)
    assert record["params_sha256"] == workdir_lib.params_sha256(_saved_params(source, 4))
    assert record["arrays"] == {"restored": 6, "reinitialized": 0, "absent": 0}
    from research.runtime import reproduce

    assert reproduce.initialized_from(str(tmp_path / "tuned")) == f"{source}@4"
    with pytest.raises(checkpoints.CheckpointError, match="has no checkpoint of step 5"):
        trainer.setup(config, str(tmp_path / "other"), task, init_from=f"{source}@5")
    assert not (tmp_path / "other").exists()
