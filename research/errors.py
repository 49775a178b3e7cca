"""The one base class of errors a user can cause and fix (`launch.py` prints their message),
and the sentence for a bad --config flag."""

import ast
import re


class UserError(Exception):
    """Bad input (config, data, workdir, flags): the message is one sentence naming the thing
    and the fix, shown without a traceback."""


def flag_error_sentence(error: Exception, argv: list[str]) -> str:
    """config_flags' error as one readable sentence: a misspelled --config.<key> comes as the
    repr of a KeyError's repr (quotes and newlines escaped twice)."""
    text = str(error)
    for _ in range(2):  # undo the reprs
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
        if not isinstance(value, str):
            break
        text = value
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if suggestion:
        wrong = suggestion.group(2)
        given = next((a.split("=")[0] for a in argv if a.split("=")[0].endswith("." + wrong)), "")
        name = given or f"--config.{wrong}"
        return (
            f"{name} is not a key of the config (did you mean {suggestion.group(1)}?); use a key "
            "the config file sets, spelled as there."
        )
    if isinstance(error, KeyError | AttributeError):
        key = text.strip("'\"")
        given = next((a.split("=")[0] for a in argv if a.split("=")[0].endswith("." + key)), "")
        return (
            f"{given or '--config.' + key} is not a key of the config; use a key the config file "
            "sets, spelled as there."
        )
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
