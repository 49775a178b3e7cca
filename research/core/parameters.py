"""Parameter paths ("Conv_0/kernel") and their selection by regular expressions, for frozen
parameters, learning-rate multipliers and the parameters `--init_from` initializes fresh.
"""

import re
from collections.abc import Iterable

import jax


def path_name(path: tuple) -> str:
    """'Dense_0/kernel' for a key path of `jax.tree_util.tree_flatten_with_path`."""
    names = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    return "/".join(names)


def paths(tree) -> list[str]:
    """The path of every array of a tree, in tree order."""
    return [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def matches(patterns: Iterable[str], path: str) -> bool:
    """Whether any regular expression of `patterns` matches all of `path`."""
    return any(re.fullmatch(pattern, path) for pattern in patterns)


def first_match(patterns: Iterable[str], path: str) -> str | None:
    """The first of `patterns` that matches all of `path`, or None."""
    return next((pattern for pattern in patterns if re.fullmatch(pattern, path)), None)
