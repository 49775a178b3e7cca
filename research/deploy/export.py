"""Exports a run's checkpoint as a directory that runs with only jax and numpy.

`python -m experiments.export --workdir=RUN --out=DIR [--step=N]` writes the task's inference
functions (StableHLO via `jax.export`, symbolic batch size, lowered for CPU, CUDA and TPU), the
parameters, the task's preprocessing assets, `signature.json` and `serving_runtime.py`.
"""

import dataclasses
import functools
import json
import logging as python_logging
import os
import shutil
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from research.core import data, optimizers, steps
from research.core.task import TaskLookup
from research.deploy import options as options_lib
from research.deploy import serving_runtime
from research.errors import UserError
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib

PLATFORMS = ("cpu", "cuda", "tpu")
BATCH = "batch"  # the symbolic leading dimension of every input and output


@dataclasses.dataclass(frozen=True)
class Function:
    """One exported function: `apply(variables, *inputs) -> {output: [batch, ...]}`.

    `inputs` lists (name, dtype, shape without the batch axis); jit-traced with a symbolic batch.
    """

    apply: Callable[..., dict[str, jax.Array]]
    inputs: list[tuple[str, str, tuple[int, ...]]]


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """What a task's serving module exports (see `research.core.task.Task.serving`).

    functions: name -> `Function`; `default_function` is the one predict and serve call
        unless an option picks another.
    assets: file name -> bytes, written under `assets/` (tokenizers, class names).
    metadata: JSON the task's codec reads back (normalization constants, feature names).
    eval_inputs: a split's arrays -> the default function's inputs (what the trainer's
        evaluation feeds the model), for checking an export against the trainer.
    """

    functions: dict[str, Function]
    default_function: str
    assets: dict[str, bytes]
    metadata: dict[str, Any]
    eval_inputs: Callable[[data.Arrays], dict[str, np.ndarray]]


class ExportError(UserError):
    """A run that cannot be exported as asked; the message names the fix."""


def _entries(variables: dict) -> tuple[list[dict], list[np.ndarray], Any]:
    """Each leaf's collection and key path (as `params_sha256` names it), the leaves, treedef."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(variables)
    entries, arrays = [], []
    for path, leaf in leaves_with_paths:
        array = np.asarray(leaf)
        entries.append(
            {
                "collection": path[0].key,
                "path": jax.tree_util.keystr(path[1:]),
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
        )
        arrays.append(array)
    return entries, arrays, treedef


def _export_function(function: Function, arrays: list[np.ndarray], treedef) -> tuple[bytes, dict]:
    """The serialized function and its signature entry (inputs, outputs, shapes, dtypes)."""
    (batch,) = jax.export.symbolic_shape(BATCH)

    def flat(parameters, *inputs):
        variables = jax.tree_util.tree_unflatten(treedef, parameters)
        return function.apply(variables, *inputs)

    parameter_specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
    input_specs = [
        jax.ShapeDtypeStruct((batch, *shape), dtype) for _, dtype, shape in function.inputs
    ]
    exported = jax.export.export(jax.jit(flat), platforms=PLATFORMS)(parameter_specs, *input_specs)
    positions = jax.tree_util.tree_unflatten(exported.out_tree, range(len(exported.out_avals)))

    def describe(name, aval):
        shape = [dim if isinstance(dim, int) else str(dim) for dim in aval.shape]
        return {"name": name, "dtype": str(aval.dtype), "shape": shape}

    signature = {
        "inputs": [
            describe(name, spec)
            for (name, _, _), spec in zip(function.inputs, input_specs, strict=True)
        ],
        "outputs": [describe(name, exported.out_avals[index]) for name, index in positions.items()],
    }
    return exported.serialize(), signature


def restore_variables(workdir: str, step: int | None = None, *, get_task: TaskLookup):
    """(config, task, dataset, model, variables, step, artifacts dir) of a run, opened
    read-only; `get_task` builds the run's task from its config (`experiments.get_task`)."""
    config = workdir_lib.read_config(workdir)
    task = get_task(config)
    if task.serving is None:
        raise ExportError(
            f"Task '{config.task}' has no serving module; add experiments/{config.task}/"
            "serving.py and name it in its Task's `serving` field."
        )
    directory = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    snapshot = tempfile.mkdtemp(prefix="export-checkpoint-")
    try:
        step = _snapshot_step(workdir, directory, step, snapshot)
        return _restore(config, task, workdir, snapshot, step)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem (or links not allowed): a copy
        shutil.copy2(source, destination)


def _snapshot_step(workdir: str, directory: str, step: int | None, snapshot: str) -> int:
    """Links (or copies) checkpoint `step` (the newest by default) into `snapshot` and returns
    it: a run still training may delete that checkpoint while the export reads it, so the
    export reads one fixed step from its own copy."""
    for _ in range(3):  # the newest may be rotated away between listing and linking it
        saved = checkpoints.saved_steps(directory)
        if not saved:
            raise ExportError(f"{workdir} holds no checkpoint; train the run before exporting it.")
        chosen = saved[-1] if step is None else step
        if chosen not in saved:
            raise ExportError(
                f"--step={step} is not a checkpoint of {workdir}; choose one of "
                f"{', '.join(map(str, saved))}."
            )
        try:
            shutil.copytree(
                os.path.join(directory, str(chosen)),
                os.path.join(snapshot, str(chosen)),
                copy_function=_link_or_copy,
            )
            return chosen
        except (FileNotFoundError, shutil.Error):
            shutil.rmtree(os.path.join(snapshot, str(chosen)), ignore_errors=True)
            if step is not None:
                break
    raise ExportError(
        f"checkpoint {step if step is not None else chosen} of {workdir} was deleted while it was "
        "read (the run is still training and keeps only its newest checkpoints); export again, "
        "or pass --step= a newer checkpoint."
    )


def _restore(config, task, workdir: str, directory: str, step: int):
    """`restore_variables`' result from checkpoint `step` of `directory`."""
    artifacts = os.path.join(workdir, workdir_lib.ARTIFACTS_DIR)
    scratch = None
    if not os.path.isdir(artifacts):  # data preparation must not write into the run
        scratch = tempfile.mkdtemp(prefix="export-artifacts-")
        artifacts = scratch
    dataset = task.load_data(artifacts)
    model = task.create_model(dataset.info)
    example = dataset.train.take(np.arange(1))  # one row: a split may be read from files
    # Only the state's structure, shapes and dtypes: traced, never computed.
    initialize = functools.partial(
        steps.create_train_state, model=model, task=task, example_batch=example,
        optimizer=optimizers.create_optimizer(config), ema=config.get("ema_decay", 0) > 0,
    )  # fmt: skip
    like = jax.eval_shape(initialize, jax.random.PRNGKey(0))
    state = steps.evaluated(checkpoints.restore_state(directory, step, like))
    variables = {"params": state.params, **state.model_state}
    return config, task, dataset, model, variables, step, artifacts


def export_run(
    workdir: str,
    out: str,
    step: int | None = None,
    options: dict | None = None,
    *,
    get_task: TaskLookup,
) -> dict:
    """Writes the export of `workdir`'s checkpoint `step` (the latest by default) to `out`;
    `options` are the task's (its serving module's `EXPORT_OPTIONS`).

    The directory is written next to `out` and renamed into place when complete. Returns
    the signature.
    """
    parent = _check_out(out)
    config, task, dataset, model, variables, step, artifacts = restore_variables(
        workdir, step, get_task=get_task
    )
    spec = task.serving().export_spec(config, model, dataset, artifacts, options or {})
    entries, arrays, treedef = _entries(variables)
    digest = serving_runtime.parameters_sha256(entries, arrays)
    assert digest == workdir_lib.params_sha256(variables["params"]), "hash conventions differ"

    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    except OSError as error:
        raise ExportError(
            f"--out={out} cannot be written ({error.strerror}); choose a folder you can write to."
        ) from None
    try:
        functions = {}
        for name, function in spec.functions.items():
            serialized, functions[name] = _export_function(function, arrays, treedef)
            with open(os.path.join(staging, name + serving_runtime.FUNCTION_SUFFIX), "wb") as f:
                f.write(serialized)
        np.savez(
            os.path.join(staging, serving_runtime.PARAMETERS_FILE),
            **{str(index): array for index, array in enumerate(arrays)},
        )
        assets_dir = os.path.join(staging, serving_runtime.ASSETS_DIR)
        os.makedirs(assets_dir)
        for name, content in spec.assets.items():
            os.makedirs(os.path.dirname(os.path.join(assets_dir, name)), exist_ok=True)
            with open(os.path.join(assets_dir, name), "wb") as file:
                file.write(content)
        shutil.copy(serving_runtime.__file__, os.path.join(staging, "serving_runtime.py"))
        signature = {
            "format_version": serving_runtime.FORMAT_VERSION,
            "task": config.task,
            "source_workdir": os.path.abspath(workdir),
            "step": step,
            "params_sha256": digest,
            "platforms": list(PLATFORMS),
            "jax_version": jax.__version__,
            "default_function": spec.default_function,
            "functions": functions,
            "metadata": spec.metadata,
            "parameters": entries,
            "config": json.loads(config.to_json_best_effort()),
        }
        with open(os.path.join(staging, serving_runtime.SIGNATURE_FILE), "w") as file:
            json.dump(signature, file, indent=1)
            file.write("\n")
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return signature


def _check_out(out: str) -> str:
    """Refuses an `out` that cannot become a new directory, before anything is read; returns
    the folder the export is written in."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out={out} is a file; choose a path for a new directory.")
    if os.path.isdir(out) and os.listdir(out):
        raise ExportError(f"--out={out} exists and is not empty; choose a new directory.")
    parent = os.path.dirname(os.path.abspath(out))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ExportError(f"--out={out} is inside the file {existing}; choose another path.")
    try:  # a folder made and removed: permissions, read-only mounts, quotas, root or not
        os.rmdir(tempfile.mkdtemp(prefix=".export-probe-", dir=existing))
    except OSError as error:
        raise ExportError(
            f"--out={out} cannot be written ({existing}: {error.strerror}); choose a folder you "
            "can write to."
        ) from None
    return parent


FLAGS = flags.FLAGS
# The flags `define_flags` defines are the command's (its --help lists them), not this module's.
flags.disclaim_key_flags()


class _ReadOnlyNotices(python_logging.Filter):
    """Orbax's notices that a checkpoint folder is opened read-only: as a reader means to."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("read only" in text or "read_only=True" in text)


def quiet_logs() -> None:
    """For commands that read a run (export, sample, predict): warnings and errors only, without
    the libraries' INFO lines or orbax's notices about read-only checkpoint folders."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    python_logging.getLogger("absl").addFilter(_ReadOnlyNotices())


def define_flags(serving_modules: dict[str, ModuleType]) -> None:
    """The export command's flags, with the `EXPORT_OPTIONS` of `serving_modules` ({task:
    its serving module})."""
    flags.DEFINE_string("workdir", None, "The run to export (a launch.py workdir).")
    flags.DEFINE_string("out", None, "The directory to write; must not exist or be empty.")
    flags.DEFINE_integer("step", None, "The checkpoint to export; the latest by default.")
    options_lib.define_flags(serving_modules, "EXPORT_OPTIONS")


def main(argv: list[str], *, get_task: TaskLookup) -> None:
    """The export command, after `define_flags`; `get_task` is `experiments.get_task`."""
    del argv
    if not FLAGS["verbosity"].present:  # --verbosity=0 shows the libraries' INFO lines
        quiet_logs()
    if not FLAGS.workdir or not FLAGS.out:
        raise app.UsageError("Pass --workdir=RUN and --out=DIR.")
    try:
        signature = export_run(
            FLAGS.workdir, FLAGS.out, FLAGS.step, options_lib.values(), get_task=get_task
        )
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None
    print(
        f"Exported step {signature['step']} of {FLAGS.workdir} to {FLAGS.out} "
        f"(params_sha256 {signature['params_sha256']})."
    )
