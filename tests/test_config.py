"""Every bad config is refused with one sentence naming the key and the fix."""

import json
import pathlib

import ml_collections
import pytest

from research.core import config as config_lib
from research.runtime import workdir as workdir_lib
from tests import helpers

GOOD = config_lib.base_config()
GOOD.task = "regression"


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("learning_rate", -0.1, ["config.learning_rate", "positive"]),
        ("learning_rate", "fast", ["config.learning_rate", "number"]),
        ("batch_size", 0, ["config.batch_size", "positive"]),
        ("num_train_steps", 0, ["config.num_train_steps", "1 or more"]),
        ("eval_every_steps", -5, ["config.eval_every_steps", "positive"]),
        ("optimizer", "rmsprop", ["config.optimizer", "adamw"]),
        ("schedule", "linear", ["config.schedule", "warmup_cosine"]),
        ("weight_decay", -1.0, ["config.weight_decay", "0"]),
        ("seed", 1.5, ["config.seed", "integer"]),
        ("seed", -1, ["config.seed", "0 or more"]),
        ("learning_rate", float("nan"), ["config.learning_rate", "finite"]),
        ("learning_rate", float("inf"), ["config.learning_rate", "finite"]),
        ("grad_clip_norm", float("-inf"), ["config.grad_clip_norm", "finite"]),
        ("momentum", 1.5, ["config.momentum", "between 0.0 and 1.0"]),
        ("decay_factor", -0.1, ["config.decay_factor", "between"]),
        ("warmup_steps", -3, ["config.warmup_steps", "0 or more"]),
        ("average_last_checkpoints", 5, ["config.keep_checkpoints", "5 or more"]),
    ],
)
def test_invalid_value_is_refused_with_its_key(key, value, words):
    config = ml_collections.ConfigDict({**GOOD.to_dict(), key: value})  # any type allowed
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, device_count=1)
    message = str(error.value)
    assert all(word in message for word in words), message
    assert message.count(". ") == 0  # one sentence


def test_batch_size_not_divisible_by_device_count_is_refused():
    config = GOOD.copy_and_resolve_references()
    config.batch_size = 30
    config.eval_batch_size = 60
    config_lib.validate(config, device_count=3)
    with pytest.raises(config_lib.ConfigError, match="config.batch_size=30 .* 4 devices"):
        config_lib.validate(config, device_count=4)


def test_batch_groups_that_the_batch_or_the_devices_cannot_split_are_refused():
    config = GOOD.copy_and_resolve_references()
    config.batch_size, config.eval_batch_size, config.batch_groups = 128, 128, 8
    for devices in (1, 2, 4, 8):
        config_lib.validate(config, device_count=devices)
    config.batch_groups = 6
    with pytest.raises(config_lib.ConfigError, match="batch_groups=6 must divide config.batch_s"):
        config_lib.validate(config, device_count=2)
    config.batch_groups = 2
    with pytest.raises(config_lib.ConfigError, match="be a multiple of the 4 devices"):
        config_lib.validate(config, device_count=4)
    config.batch_groups, config.grad_accum_steps = 8, 2
    with pytest.raises(config_lib.ConfigError, match="grad_accum_steps=1 and --config.mesh.fsdp"):
        config_lib.validate(config, device_count=1)


def test_missing_required_key_is_refused():
    config = GOOD.copy_and_resolve_references()
    del config["data_dir"]
    with pytest.raises(config_lib.ConfigError, match="no key 'data_dir'"):
        config_lib.validate(config, device_count=1)


def test_good_config_passes():
    config_lib.validate(GOOD, device_count=1)


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--config.no_such_key=1"], "--config.no_such_key is not a key of the config; use a"),
        (
            ["--config.learnin_rate=0.1"],
            "--config.learnin_rate is not a key of the config (did you mean learning_rate?)",
        ),
        (["--config.learning_rate=abc"], "--config.learning_rate=abc is not valid"),
        (["--config.batch_size=-4"], "config.batch_size is -4 but must be a positive integer"),
        (["--config=experiments/none.py"], "config file experiments/none.py could not be loaded"),
        (
            [
                "--config=experiments/image_classification/configs/cifar10_resnet.py",
                "--config.data_dir=/nonexistent/tfds",
            ],
            "Dataset 'cifar10' is not prepared in /nonexistent/tfds; prepare it there with",
        ),
    ],
)
def test_launch_refuses_bad_flags_before_writing_anything(tmp_path, arguments, expected):
    workdir = tmp_path / "run"
    result = helpers.launch(*arguments, f"--workdir={workdir}", timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and expected in last_line, result.stderr[-2000:]
    assert "\\" not in last_line  # no escaped quotes or newlines
    assert not workdir.exists() or not any(
        (workdir / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoints")
    )


def test_nested_numbers_are_checked_too():
    config = ml_collections.ConfigDict({**GOOD.to_dict(), "model": {"dropout_rate": 1.5}})
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.dropout_rate is 1\.5"):
        config_lib.validate(config, device_count=1)


def test_a_run_recorded_before_a_key_existed_resumes_and_a_changed_key_is_refused(tmp_path):
    """A key the recorded config lacks counts as its default (what the older code did)."""
    recorded = json.loads(GOOD.to_json_best_effort())
    del recorded["train_order"]  # written before the key existed
    (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded))
    workdir_lib.check_config_matches(str(tmp_path), GOOD)
    changed = GOOD.copy_and_resolve_references()
    changed.train_order = "hash"
    with pytest.raises(workdir_lib.WorkdirError) as error:
        workdir_lib.check_config_matches(str(tmp_path), changed)
    assert "(keys differ: train_order)" in str(error.value)


def test_list_shows_each_config_description_whole():
    """`launch.py --list` prints each config's first docstring paragraph, never cut mid-way."""
    result = helpers.run_command(helpers.launch_command("--list"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    configs = sorted(pathlib.Path(helpers.REPO_ROOT).glob("experiments/*/configs/[!_]*.py"))
    assert len(lines) == len(configs)
    for line, path in zip(lines, configs, strict=True):
        name, description = line.split(maxsplit=1)
        assert name == str(path.relative_to(helpers.REPO_ROOT))
        paragraph = path.read_text().split('"""')[1].strip().split("\n\n")[0]
        assert description == " ".join(part.strip() for part in paragraph.splitlines())
        assert description.endswith((".", ")", ".)")), line


@pytest.mark.parametrize(
    "path",
    sorted(str(p) for p in pathlib.Path(helpers.REPO_ROOT).glob("experiments/*/configs/[!_]*.py")),
)
def test_a_300_step_trial_of_every_config_logs_more_than_once(path):
    """`--config.num_train_steps=300` (a trial a user runs first) logs its training metrics
    before the end as well as at it."""
    config = helpers.load_config(path, num_train_steps=300)
    logs = [step for step in range(1, 301) if step % config.log_every_steps == 0 or step == 300]
    assert len(logs) >= 2, (path, config.log_every_steps)
