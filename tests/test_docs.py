"""The documentation names only what exists: every config path and argument, `--config.<key>`,
module, test, repository file and link in README.md and docs/*.md is checked against the code."""

import ast
import functools
import glob
import importlib
import importlib.util
import os
import pathlib
import re
import subprocess

import ml_collections
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DEFAULT_CONFIG = "experiments/image_classification/configs/mnist1d_cnn.py"  # launch.py's

CONFIG_PATH = re.compile(r"(experiments/\w+/configs/\w+\.py)(?::([^\s`'\",;)\]]+))?")
CONFIG_FLAG = re.compile(r"--config=(experiments/\w+/configs/\w+\.py)(?::([^\s`'\",;)\]]+))?")
CONFIG_KEY_FLAG = re.compile(r"--config\.([A-Za-z_][\w.]*\w)")
CONFIG_KEY = re.compile(r"(?<![\w./$-])config\.([A-Za-z_][\w.]*\w)")
GRID = re.compile(r"--grid=(['\"])(.*?)\1")
SET_FLAG = re.compile(r"--set[= ]([A-Za-z_]\w*)=")
PYTHON_MODULE = re.compile(r"python3? -m ([\w.]+)")
DOTTED_NAME = re.compile(r"(?<![\w./])((?:research|experiments|benchmarks)(?:\.\w+)+)")
REPO_FILE = re.compile(
    r"(?<![\w./~-])((?:research|experiments|tests|benchmarks|docs|\.ci)/[\w./*-]*[\w*]"
    r"|launch\.py|requirements\.txt|pyproject\.toml)(?:::(\w+))?"
)
TEST_NAME = re.compile(r"(test_[a-z]\w*)(?:\[[^\]]*\])?")  # a passage that is one test's name
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")
SHELL_VARIABLE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)$")
NOT_CONFIG_KEYS = {"json", "py"}  # config.json, config.py are files


# --- reading the pages -------------------------------------------------------------------------


class Page:
    """One Markdown page cut into code passages (a fenced block's logical lines, an inline code
    span) and the prose around them."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.name = (
            str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name
        )
        self.text = path.read_text(encoding="utf-8")
        self.passages: list[str] = []
        self.code_blocks: list[str] = []
        prose_lines: list[str] = []
        block: list[str] | None = None
        for line in self.text.split("\n"):
            if line.strip().startswith("```"):
                if block is None:
                    block = []
                else:
                    self.code_blocks.append("\n".join(block))
                    self.passages += _logical_lines(block)
                    block = None
                prose_lines.append("")
            elif block is not None:
                block.append(line)
            else:
                prose_lines.append(line)
        self.prose = "\n".join(prose_lines)
        for paragraph in re.split(r"\n\s*\n", self.prose):
            for match in re.finditer(r"(`+)(.+?)\1", paragraph, flags=re.DOTALL):
                self.passages.append(" ".join(match.group(2).split()))
        self.bare_prose = re.sub(r"(`+).+?\1", " ", self.prose, flags=re.DOTALL)

    def headings(self) -> set[str]:
        """GitHub's anchors of the page's headings."""
        anchors, seen = set(), {}
        for line in self.prose.split("\n"):
            heading = re.match(r"#+ (.+)", line)
            if heading:
                slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
                anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
                seen[slug] = seen.get(slug, 0) + 1
        return anchors


def _logical_lines(lines: list[str]) -> list[str]:
    """A code block's commands: continuation lines joined, comments dropped, and variables set
    in the block (`C=experiments/...`) substituted where they are used."""
    joined, current = [], ""
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line)
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append((current + line).strip())
        current = ""
    if current:
        joined.append(current.strip())
    variables, commands = {}, []
    for line in joined:
        for name, value in variables.items():
            line = re.sub(rf"\$\{{{name}\}}|\${name}\b", lambda _, value=value: value, line)
        assignment = SHELL_VARIABLE.match(line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2).strip("\"'")
        commands.append(line)
    return commands


@functools.cache
def pages() -> list[Page]:
    return [Page(path) for path in PAGES]


# --- what exists -------------------------------------------------------------------------------


@functools.cache
def load_config(path: str, argument: str | None) -> ml_collections.ConfigDict:
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return module.get_config(argument) if argument is not None else module.get_config()


@functools.cache
def every_config() -> list[ml_collections.ConfigDict]:
    from research.core.config import base_config

    paths = sorted(glob.glob("experiments/*/configs/[!_]*.py", root_dir=REPO_ROOT))
    return [base_config(), *(load_config(path, None) for path in paths)]


def has_key(config: ml_collections.ConfigDict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


@functools.cache
def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@functools.cache
def top_level_names(module: str) -> dict[str, ast.AST]:
    source = pathlib.Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names[node.name] = node
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            if isinstance(target, ast.Name):
                names[target.id] = node
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def dotted_name_exists(name: str) -> bool:
    """`research.core.task.Task`: the longest module prefix exists and defines the rest (a
    top-level name, and a method of it when it is a class)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module_exists(module):
            rest = parts[cut:]
            break
    else:
        return False
    if not rest:
        return True
    node = top_level_names(module).get(rest[0])
    if node is None:
        return False
    if len(rest) > 1 and isinstance(node, ast.ClassDef):
        members = {getattr(item, "name", None) for item in node.body}
        members |= {
            target.id
            for item in node.body
            if isinstance(item, ast.AnnAssign | ast.Assign)
            for target in getattr(item, "targets", [getattr(item, "target", None)])
            if isinstance(target, ast.Name)
        }
        return rest[1] in members
    return True


@functools.cache
def defined_tests() -> dict[str, set[str]]:
    """Test file (tests/...) -> the names of the test functions defined in it."""
    return {
        str(path.relative_to(REPO_ROOT)): set(
            re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), re.M)
        )
        for path in (REPO_ROOT / "tests").rglob("test_*.py")
    }


# --- the checks --------------------------------------------------------------------------------


def problems_of(check) -> list[str]:
    return [f"{page.name}: {problem}" for page in pages() for problem in check(page)]


def config_path_problems(page: Page) -> list[str]:
    problems = []
    for passage in page.passages:
        for path, argument in CONFIG_PATH.findall(passage):
            if not (REPO_ROOT / path).is_file():
                problems.append(f"{path} does not exist")
            elif argument and "<" not in argument:
                try:
                    load_config(path, argument)
                except Exception as error:  # noqa: BLE001 (any failure means the docs are wrong)
                    problems.append(f"{path}:{argument} is refused by get_config: {error!r}")
    return problems


def config_key_problems(page: Page) -> list[str]:
    """A key on a command line that names a config must be that config's; launch.py without
    --config runs the default config; any other key must be in some config."""
    problems = []

    def check(keys: list[str], config_named: tuple[str, str | None] | None, where: str) -> None:
        if config_named and not (REPO_ROOT / config_named[0]).is_file():
            return  # config_path_problems names it
        configs = [load_config(*config_named)] if config_named else every_config()
        for key in keys:
            if not any(has_key(config, key) for config in configs):
                owner = f"{config_named[0]}" if config_named else "any config"
                problems.append(f"config key '{key}' is not in {owner} (in: {where})")

    for passage in page.passages:
        flags = CONFIG_FLAG.findall(passage)
        if flags:
            path, argument = flags[-1]  # the last --config wins, as in launch.py
            named = (path, argument if argument and "<" not in argument else None)
        elif "--config=" in passage:
            named = None  # a config spelled with a placeholder: any config
        elif re.search(r"\blaunch\.py\b", passage):
            named = (DEFAULT_CONFIG, None)
        else:
            named = None
        keys = CONFIG_KEY_FLAG.findall(passage)
        keys += [item.split("=")[0] for _, grid in GRID.findall(passage) for item in grid.split()]
        check(keys, named, passage[:80])
        loose = [k for k in CONFIG_KEY.findall(passage) if k.split(".")[-1] not in NOT_CONFIG_KEYS]
        check(loose + SET_FLAG.findall(passage), None, passage[:80])
    check(CONFIG_KEY_FLAG.findall(page.bare_prose), None, "prose")
    return problems


def module_problems(page: Page) -> list[str]:
    problems = []
    for passage in page.passages:
        modules = PYTHON_MODULE.findall(passage)
        for module in modules:
            if not module_exists(module):
                problems.append(f"python -m {module}: no such module")
        for name in DOTTED_NAME.findall(passage):
            if name not in modules and not dotted_name_exists(name):
                problems.append(f"{name}: no such module or name")
    return problems


def file_problems(page: Page) -> list[str]:
    problems = []
    for passage in page.passages:
        for path, test in REPO_FILE.findall(passage):
            if not glob.glob(path, root_dir=REPO_ROOT):
                problems.append(f"{path} does not exist")
            elif test and test not in defined_tests().get(path, ()):
                problems.append(f"{path} has no {test}")
        test = TEST_NAME.fullmatch(passage)
        if test and not any(test.group(1) in names for names in defined_tests().values()):
            problems.append(f"no test is named {test.group(1)}")
    return problems


def link_problems(page: Page) -> list[str]:
    problems = []
    for target in LINK.findall(page.bare_prose):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.path.parent / path).resolve() if path else page.path
        if not resolved.exists():
            problems.append(f"link {target}: {path} does not exist")
        elif anchor and resolved.suffix == ".md":
            linked = next((p for p in pages() if p.path == resolved), None) or Page(resolved)
            if anchor not in linked.headings():
                problems.append(f"link {target}: {linked.name} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize(
    "check",
    [config_path_problems, config_key_problems, module_problems, file_problems, link_problems],
    ids=lambda check: check.__name__.removesuffix("_problems"),
)
def test_the_documentation_names_only_what_exists(check):
    problems = problems_of(check)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_renamed_key_a_missing_config_and_a_broken_link(tmp_path):
    page_path = tmp_path / "page.md"
    page_path.write_text(
        "```bash\n"
        "C=experiments/seq2seq/configs\n"
        ".venv/bin/python launch.py --config=$C/scan_transformer.py:split=simple \\\n"
        "    --config.model.widht=64 --config.eval_every_steps=500\n"
        "```\n\n"
        "Run `launch.py --config=experiments/regression/configs/no_such.py` or "
        "`launch.py --config.sequence_length=8` ([scaling](no_such.md)), then "
        "`python -m research.no_such` and `test_no_such_test`.\n",
        encoding="utf-8",
    )
    page = Page(page_path)
    assert [problem.split(" (in: ")[0] for problem in config_key_problems(page)] == [
        "config key 'model.widht' is not in experiments/seq2seq/configs/scan_transformer.py",
        # launch.py without --config runs MNIST-1D, which has no sequence_length
        f"config key 'sequence_length' is not in {DEFAULT_CONFIG}",
    ]
    assert config_path_problems(page) == [
        "experiments/regression/configs/no_such.py does not exist"
    ]
    assert module_problems(page) == ["python -m research.no_such: no such module"]
    assert file_problems(page) == [
        "experiments/regression/configs/no_such.py does not exist",
        "no test is named test_no_such_test",
    ]
    assert link_problems(page) == ["link no_such.md: no_such.md does not exist"]


def test_the_readme_starts_with_the_two_commands_and_stays_a_front_door():
    readme = pages()[0]
    assert len(readme.text.splitlines()) <= 200
    first, second = readme.code_blocks[:2]
    assert first.startswith("python3 -m venv .venv && ") and first.endswith("launch.py")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = re.search(r"/bin/python\"? (-m pytest.*)", ci).group(1)
    assert second.startswith("python3 -m venv .venv && ")
    assert second.endswith(f".venv/bin/python {test_command}")


def test_the_readme_layout_names_every_library_module():
    layout = next(block for block in pages()[0].code_blocks if block.startswith("launch.py"))
    entries = re.split(r"\n  (?=\w+/)", layout)
    for package in ("core", "runtime", "deploy", "compare"):
        entry = next(e for e in entries if e.startswith(f"{package}/"))
        modules = sorted(
            path.stem
            for path in (REPO_ROOT / "research" / package).glob("*.py")
            if path.stem != "__init__"
        )
        missing = [m for m in modules if not re.search(rf"\b{m}\b", entry)]
        assert not missing, f"README's layout does not name research/{package}/: {missing}"


def test_the_sbatch_script_of_the_gpu_page_is_valid_bash(tmp_path):
    gpu_page = next(page for page in pages() if page.name == os.path.join("docs", "gpu_tpu.md"))
    scripts = [block for block in gpu_page.code_blocks if block.startswith("#!/bin/bash\n#SBATCH")]
    assert len(scripts) == 1
    path = tmp_path / "job.sbatch"
    path.write_text(scripts[0] + "\n")
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "--distributed" in scripts[0] and "srun" in scripts[0]
