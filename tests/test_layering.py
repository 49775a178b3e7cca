"""The library knows no task: no module under research/ imports experiments/, at its top, inside
a function, or by a module name handed to importlib (checked on the source, nothing is run); the
task options of export, predict and serve are declared by each task's serving module."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

import experiments
from research.deploy import options
from tests.helpers import REPO_ROOT, load_config, run_module

# Calls that import (or find) the module their first argument names.
IMPORTING_CALLS = ("import_module", "__import__", "find_spec", "run_module")
EXPERIMENTS = re.compile(r"experiments(\.|$)")


def _called_name(call: ast.Call) -> str:
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def _leading_text(node: ast.expr) -> str | None:
    """A string argument's text, or an f-string's text before its first field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0]) or ""
    return None


def imports_of_experiments(source: str) -> list[int]:
    """The lines of `source` that import the `experiments` package or a module of it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call) and _called_name(node) in IMPORTING_CALLS and node.args:
            names = [_leading_text(node.args[0]) or ""]
        else:
            continue
        if any(EXPERIMENTS.match(name) for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_check_finds_imports_inside_functions_and_module_names_handed_to_importlib():
    source = "\n".join(
        [
            "import experiments",
            "from experiments.seq2seq import serving",
            "def lazy(task):",
            "    import experiments.regression.task as regression",
            "    importlib.import_module('experiments.regression.task')",
            "    importlib.import_module(f'experiments.{task}.serving')",
            "    __import__('experiments')",
            "    importlib.util.find_spec('experiments.seq2seq')",
            "import experimental, research.experiments",  # other packages
            "from research import experiments_log",
            "raise ValueError('add experiments/seq2seq/serving.py')",  # a message
            "importlib.import_module(f'research.{name}')",
        ]
    )
    assert imports_of_experiments(source) == [1, 2, 4, 5, 6, 7, 8]


def test_nothing_under_research_imports_experiments():
    modules = sorted(pathlib.Path(REPO_ROOT, "research").rglob("*.py"))
    assert len(modules) > 30  # the whole library was read
    found = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in modules
        for line in imports_of_experiments(path.read_text())
    ]
    assert found == [], f"research/ imports experiments/ at {found}"


def test_each_serving_module_declares_its_options_and_a_name_two_tasks_share_is_one_flag():
    serving = experiments.serving_modules()
    assert list(serving) == list(experiments.TASKS)
    export_options = options.declared(serving, "EXPORT_OPTIONS")
    assert list(export_options) == ["beam_sizes", "max_prompt_length", "max_new_tokens"]
    predict_options = options.declared(serving, "PREDICT_OPTIONS")
    assert sorted(predict_options) == [
        "beam_size", "length_penalty", "max_new_tokens", "seed", "temperature", "top_k", "top_p"
    ]  # fmt: skip
    top_k = predict_options["top_k"]
    assert top_k.kind is int
    image = serving["image_classification"].PREDICT_OPTIONS["top_k"].help
    language = serving["language_modeling"].PREDICT_OPTIONS["top_k"].help
    assert top_k.help == f"{image} {language}"
    assert image.startswith("Image classification: ") and language.startswith("Language modeling")


def test_the_serve_command_lists_every_task_option_in_its_help():
    result = run_module("experiments.serve", "--help", timeout=120)
    help_text = " ".join(result.stdout.split())
    serving = experiments.serving_modules()
    for name, option in options.declared(serving, "PREDICT_OPTIONS").items():
        assert f"--{name}: {' '.join(option.help.split())}" in help_text, name
    assert "--port: The port to listen on." in help_text  # the server's own flags too


def test_seq2seq_export_refuses_beam_sizes_that_are_not_whole_numbers_in_one_sentence():
    serving = experiments.serving_modules()["seq2seq"]
    config = load_config(os.path.join(REPO_ROOT, "experiments/seq2seq/configs/scan_transformer.py"))
    cases = {
        ("1", "x"): "--beam_sizes=1,x must be whole numbers, such as --beam_sizes=1,4.",
        ("0", "2"): "--beam_sizes=0,2 must all be at least 1.",
    }
    for sizes, message in cases.items():
        with pytest.raises(serving.InputError) as error:
            serving.export_spec(config, None, None, "", {"beam_sizes": list(sizes)})
        assert str(error.value) == message


def test_the_commands_run_from_any_directory_as_the_readme_installs_them(tmp_path):
    """The README's setup (`pip install ... -e .`) puts the packages on the import path."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for module, first_line in (
        ("experiments.predict", "Predicts from the command line with an exported model"),
        ("research.compare.report", "usage: report.py"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.stdout.startswith(first_line), result.stderr
