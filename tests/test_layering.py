"""The library knows no task: no module under research/ imports experiments/, at its top, inside
a function, or by a module name handed to importlib (checked on the source, nothing is run)."""

import ast
import pathlib
import re

from tests.helpers import REPO_ROOT

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
