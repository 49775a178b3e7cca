"""Launches an experiment: `python launch.py --config=experiments/<task>/configs/<name>.py`.

With no flags it runs the default experiment (a CNN on MNIST-1D) into a new workdir under
`runs/`. Any config key can be overridden with `--config.<key>=<value>`.
"""

import datetime
import logging as python_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from research.errors import flag_error_sentence

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
HELP_FLAGS = ("--help", "-h", "--helpshort", "-?", "--helpfull")

flags.DEFINE_string("workdir", None, "Where the run writes its records and checkpoints.")
flags.DEFINE_bool("overwrite", False, "Replace a run of a different config in --workdir.")
flags.DEFINE_string(
    "init_from",
    None,
    "Start a new run from the parameters of the run in this workdir: its newest checkpoint, or "
    "WORKDIR@STEP for that step.",
)
flags.DEFINE_string(
    "reproduce", None, "Rerun the finished run in this workdir and compare the results."
)
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 30, "Multi-host: how long before a silent process fails the run."
)
flags.DEFINE_string(
    "compilation_cache_dir",
    "~/.cache/research/jax_compilation_cache",
    "JAX's persistent compilation cache, so a second launch compiles faster ('' turns it off).",
)
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() and let it detect the cluster."
)
FLAGS = flags.FLAGS


_CHATTY_LIBRARIES = ("orbax", "tensorflow_datasets", "jax/_src", "optax")


def _keep_log_record(record: python_logging.LogRecord) -> bool:
    """Libraries log their inner steps at INFO; keep their warnings and errors only."""
    if record.levelno >= python_logging.WARNING:
        return True
    return not any(library in record.pathname for library in _CHATTY_LIBRARIES)


def _default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{name}-{stamp}")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _explain_config_error(error: Exception) -> str:
    """One sentence for a bad --config file or --config.<key> override."""
    message = str(error)
    if isinstance(error, AttributeError | KeyError):
        return flag_error_sentence(error, sys.argv[1:])
    override = re.search(r"flag (--config\.[\w.]+)=", message)
    if override:
        return (
            f"{message.split(': ', 1)[0].removeprefix('flag ')} is not valid "
            f"({message.split(': ', 1)[-1]}); give {override.group(1)} a value of the type "
            "the config file uses."
        )
    argument_error = _config_argument_error(message)
    if argument_error:
        return argument_error
    if isinstance(error, OSError) and "config file" in message:
        paths = [arg.split("=", 1)[-1] for arg in sys.argv[1:] if arg.startswith("--config=")]
        return (
            f"config file {paths[-1] if paths else DEFAULT_CONFIG} could not be loaded; pass "
            "--config=experiments/<task>/configs/<name>.py with get_config() defined in it."
        )
    return f"{message.splitlines()[0]}; see `python launch.py --helpshort`."


def _config_argument_error(message: str) -> str | None:
    """One sentence when a config file was given an argument its get_config does not take."""
    paths = [arg.split("=", 1)[-1] for arg in sys.argv[1:] if arg.startswith("--config=")]
    if not paths or ":" not in paths[-1] or "parsing config file" not in message:
        return None
    path, argument = paths[-1].split(":", 1)
    return (
        f"config file {path} does not take the argument '{argument}'; see its docstring for "
        f"the arguments it takes, or drop ':{argument}'."
    )


def _resolve_config_paths(argv: list[str]) -> list[str]:
    """--config paths not found from the working directory are looked up in the repository."""
    resolved = []
    for arg in argv:
        if arg.startswith("--config="):
            path, colon, argument = arg.removeprefix("--config=").partition(":")
            in_repository = os.path.join(REPO_ROOT, path)
            if not os.path.exists(path) and os.path.exists(in_repository):
                arg = f"--config={in_repository}{colon}{argument}"
        resolved.append(arg)
    return resolved


def list_configs() -> str:
    """Every experiment config with its description: the first paragraph of its docstring,
    on one line (a description is never cut mid-sentence)."""
    lines = []
    for task in sorted(os.listdir(os.path.join(REPO_ROOT, "experiments"))):
        folder = os.path.join(REPO_ROOT, "experiments", task, "configs")
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py") and not name.startswith("_"):
                with open(os.path.join(folder, name)) as file:
                    paragraph = file.read().split('"""')[1].strip().split("\n\n")[0]
                description = " ".join(line.strip() for line in paragraph.splitlines())
                lines.append(f"{f'experiments/{task}/configs/{name}':<62} {description}")
    return "\n".join(lines)


def _define_config_flag() -> None:
    # config_flags reads --config.<key> overrides from sys.argv while defining the flag.
    try:
        config_flags.DEFINE_config_file(
            "config",
            DEFAULT_CONFIG,
            "Experiment config file, optionally `path.py:argument`.",
            lock_config=True,
        )
    except Exception as error:
        _fail(_explain_config_error(error))


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses flags and loads the config; a mistake ends the run with one sentence."""
    try:
        remaining = FLAGS(argv)
        FLAGS.config.keys()  # the config file is loaded (and may fail) on first access
    except Exception as error:  # config_flags raises several types for bad input
        _fail(_explain_config_error(error))
    return remaining


def _enable_compilation_cache(directory: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache even fast compilations: on a CPU most steps compile in well under a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _append_xla_flags(config_flags: str) -> None:
    """Appends the config's `xla_flags` to XLA_FLAGS; XLA reads it when the backend starts,
    which nothing before this point has done (the trainer warns if it had)."""
    if config_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {config_flags}".strip()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; pass settings as --config.<key>=<value>.")
    logging.get_absl_handler().addFilter(_keep_log_record)
    import tensorflow_datasets as tfds  # without TensorFlow, which data.import_tensorflow loads

    tfds.disable_progress_bar()
    if FLAGS.compilation_cache_dir:
        _enable_compilation_cache(os.path.expanduser(FLAGS.compilation_cache_dir))
    # Import after flag parsing so XLA sees the environment the user set.
    import experiments
    from research.core import trainer
    from research.core.config import with_defaults
    from research.errors import UserError
    from research.runtime import parallel, preemption, reproduce
    from research.runtime import workdir as workdir_lib

    try:
        init_from = FLAGS.init_from
        if FLAGS.reproduce:
            reproduce.check_finished(FLAGS.reproduce)
            config = workdir_lib.read_config(FLAGS.reproduce)
            workdir = FLAGS.workdir or f"{FLAGS.reproduce.rstrip('/')}-reproduced"
            init_from = init_from or reproduce.initialized_from(FLAGS.reproduce)
        else:
            config = with_defaults(FLAGS.config)  # every key the library reads, once
            workdir = FLAGS.workdir or _default_workdir(FLAGS["config"].config_filename)
        _append_xla_flags(config.xla_flags)
        parallel.fix_cpu_threads(config.batch_groups)
        if FLAGS.coordinator_address or FLAGS.distributed:
            parallel.initialize_distributed(
                FLAGS.coordinator_address,
                FLAGS.num_processes,
                FLAGS.process_id,
                heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
            )
        task = experiments.get_task(config)
        logging.info("Workdir: %s", os.path.abspath(workdir))
        trainer.train_and_evaluate(
            config, workdir, task, init_from=init_from, overwrite=FLAGS.overwrite
        )
        if FLAGS.reproduce:
            report = reproduce.compare(FLAGS.reproduce, workdir)
            print(reproduce.describe(report))
            sys.exit(0 if report["reproduced"] else 1)
    except preemption.Preempted as stop:
        print(stop, file=sys.stderr)
        sys.exit(0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        parallel.exit_with_error(2)
    except Exception:
        if not parallel.several_processes():
            raise
        traceback.print_exc()
        parallel.exit_with_error(1)


if __name__ == "__main__":
    sys.argv = _resolve_config_paths(sys.argv)
    if "--list" in sys.argv[1:]:
        print(list_configs())
        sys.exit(0)
    _define_config_flag()
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        app.usage(shorthelp="--helpfull" not in sys.argv, writeto_stdout=True)
        print("\n--list prints every experiment config with its description.")
        sys.exit(0)
    app.run(main, flags_parser=_parse_flags)
