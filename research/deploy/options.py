"""Task options of the export, predict and serve commands, declared by each task's serving module.

A serving module's `EXPORT_OPTIONS` (export) and `PREDICT_OPTIONS` (predict and serve) map a
flag name to an `Option`; a command defines one flag per name over every task it is given.
"""

import dataclasses
import sys
from types import ModuleType
from typing import Any

from absl import flags

# The flags are the command's (its --help lists them): absl credits them to the module that
# calls `define_flags`, skipping this one. They are registered as this module's, for `values()`.
flags.disclaim_key_flags()
_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, list: flags.DEFINE_list}


@dataclasses.dataclass(frozen=True)
class Option:
    """`--name=VALUE`, parsed as `kind` (int, float, or list: comma-separated strings) and
    handed to the task unchecked; `help` starts with the task's name ("Seq2seq: ...")."""

    kind: type
    help: str


def declared(serving_modules: dict[str, ModuleType], attribute: str) -> dict[str, Option]:
    """Every task's options of one command (`attribute` names the table), merged: an option
    two tasks declare (the same kind) is one flag whose help gives both meanings."""
    merged: dict[str, Option] = {}
    for module in serving_modules.values():
        for name, option in getattr(module, attribute, {}).items():
            if name in merged:
                assert merged[name].kind is option.kind, f"two tasks give --{name} two kinds"
                option = Option(option.kind, f"{merged[name].help} {option.help}")
            merged[name] = option
    return merged


def define_flags(serving_modules: dict[str, ModuleType], attribute: str) -> None:
    """Defines a flag (unset by default) per task option of one command; `values()` reads them."""
    for name, option in declared(serving_modules, attribute).items():
        _DEFINE[option.kind](name, None, option.help, module_name=__name__)
    flags.adopt_module_key_flags(sys.modules[__name__])


def values() -> dict[str, Any]:
    """The task options set on the command line: {name: value}."""
    return {
        flag.name: flag.value
        for flag in flags.FLAGS.get_flags_for_module(__name__)
        if flag.value is not None
    }
