"""SCAN (Lake & Baroni 2018) generated from its grammar, with the original release's splits.

Run `python -m experiments.seq2seq.scan export OUT_DIR` to write the release's text files.
"""

from __future__ import annotations

import functools
import itertools
import pathlib
import sys

import numpy as np

PRIMITIVES = ("walk", "run", "jump", "look")
DIRECTIONS = ("left", "right")
COMMAND_WORDS: tuple[str, ...] = (
    *PRIMITIVES,
    "turn",
    *DIRECTIONS,
    "opposite",
    "around",
    "twice",
    "thrice",
    "and",
    "after",
)
ACTIONS: tuple[str, ...] = (
    "I_WALK",
    "I_RUN",
    "I_JUMP",
    "I_LOOK",
    "I_TURN_LEFT",
    "I_TURN_RIGHT",
)
SPLITS = ("simple", "length", "addprim_jump", "addprim_turn_left")

SIMPLE_SEED = 0
SIMPLE_TRAIN_FRACTION = 0.8
# The length split trains on outputs of at most this many actions, as in the release.
LENGTH_MAX_TRAIN_ACTIONS = 22
# In the add-primitive splits the lone primitive command makes up this share of train lines.
PRIMITIVE_TRAIN_FRACTION = 0.1

SPLIT_FILES = {
    "simple": ("simple_split", "tasks_{part}_simple.txt"),
    "length": ("length_split", "tasks_{part}_length.txt"),
    "addprim_jump": ("add_prim_split", "tasks_{part}_addprim_jump.txt"),
    "addprim_turn_left": ("add_prim_split", "tasks_{part}_addprim_turn_left.txt"),
}

Pair = tuple[str, str]


def _interpret_verb_phrase(words: list[str]) -> list[str]:
    """Meaning of V: a primitive or `turn`, optionally modified by a direction."""
    head, direction = words[0], words[-1]
    if head not in PRIMITIVES and head != "turn":
        raise ValueError(f"Expected a primitive or 'turn', got {head!r}.")
    action = [] if head == "turn" else [f"I_{head.upper()}"]
    if len(words) == 1 and head != "turn":
        return action
    if direction not in DIRECTIONS:
        raise ValueError(f"Expected a direction after {head!r}, got {direction!r}.")
    turn = [f"I_TURN_{direction.upper()}"]
    if len(words) == 2:
        # Bare `turn left` is the turn itself; `walk left` turns and then acts.
        return turn + action
    if len(words) == 3 and words[1] == "opposite":
        return turn + turn + action
    if len(words) == 3 and words[1] == "around":
        return (turn + action) * 4
    raise ValueError(f"Cannot interpret verb phrase {' '.join(words)!r}.")


def _interpret_sentence(words: list[str]) -> list[str]:
    """Meaning of S: a verb phrase, optionally repeated by `twice` or `thrice`."""
    if not words:
        raise ValueError("Expected a verb phrase, got nothing.")
    repeats = {"twice": 2, "thrice": 3}.get(words[-1])
    if repeats is None:
        return _interpret_verb_phrase(words)
    return _interpret_verb_phrase(words[:-1]) * repeats


def interpret(command: str) -> str:
    """Return the space-separated action sequence that a SCAN command means."""
    words = command.split()
    for conjunction in ("and", "after"):
        if conjunction in words:
            index = words.index(conjunction)
            first = _interpret_sentence(words[:index])
            second = _interpret_sentence(words[index + 1 :])
            # `a after b` executes b first.
            actions = first + second if conjunction == "and" else second + first
            return " ".join(actions)
    return " ".join(_interpret_sentence(words))


def _verb_phrases() -> list[str]:
    phrases = list(PRIMITIVES)
    for head, direction in itertools.product((*PRIMITIVES, "turn"), DIRECTIONS):
        phrases += [f"{head} {modifier}{direction}" for modifier in ("", "opposite ", "around ")]
    return phrases


@functools.cache
def _all_commands() -> tuple[str, ...]:
    sentences = [
        f"{phrase}{suffix}" for phrase in _verb_phrases() for suffix in ("", " twice", " thrice")
    ]
    compound = [
        f"{first} {conjunction} {second}"
        for conjunction in ("and", "after")
        for first, second in itertools.product(sentences, repeat=2)
    ]
    # Sorted so that the order does not depend on how the grammar is enumerated.
    return tuple(sorted(sentences + compound))


def all_commands() -> list[str]:
    """All 20,910 distinct SCAN commands, sorted."""
    return list(_all_commands())


@functools.cache
def _all_pairs() -> tuple[Pair, ...]:
    return tuple((command, interpret(command)) for command in _all_commands())


def _add_primitive_split(primitive: str) -> dict[str, list[Pair]]:
    """Hold out every composed use of `primitive`; train sees it alone, oversampled."""
    target = primitive.split()

    def uses_primitive(command: str) -> bool:
        # Contiguous word match: for `turn left` this counts `turn left`, `turn left twice` and
        # `... and turn left`, but not `turn opposite left` or `turn around left`. That reading
        # reproduces the release's 1,208 test commands and 19,702 distinct train commands.
        words = command.split()
        return any(
            words[start : start + len(target)] == target
            for start in range(len(words) - len(target) + 1)
        )

    pairs = _all_pairs()
    test = [pair for pair in pairs if pair[0] != primitive and uses_primitive(pair[0])]
    others = [pair for pair in pairs if pair[0] != primitive and not uses_primitive(pair[0])]
    # Copies n with n / (len(others) + n) == fraction; exact for both release splits.
    copies = round(len(others) * PRIMITIVE_TRAIN_FRACTION / (1 - PRIMITIVE_TRAIN_FRACTION))
    train = others + [(primitive, interpret(primitive))] * copies
    # Shuffle so the repeated primitive line is spread through train, as in the release.
    order = np.random.default_rng(SIMPLE_SEED).permutation(len(train))
    return {"train": [train[index] for index in order], "test": test}


def load_split(split: str) -> dict[str, list[Pair]]:
    """Return {"train": [(command, actions), ...], "test": [...]} for one SCAN split."""
    pairs = _all_pairs()
    if split == "simple":
        order = np.random.default_rng(SIMPLE_SEED).permutation(len(pairs))
        train_size = round(SIMPLE_TRAIN_FRACTION * len(pairs))
        shuffled = [pairs[index] for index in order]
        return {"train": shuffled[:train_size], "test": shuffled[train_size:]}
    if split == "length":
        return {
            "train": [p for p in pairs if len(p[1].split()) <= LENGTH_MAX_TRAIN_ACTIONS],
            "test": [p for p in pairs if len(p[1].split()) > LENGTH_MAX_TRAIN_ACTIONS],
        }
    if split == "addprim_jump":
        return _add_primitive_split("jump")
    if split == "addprim_turn_left":
        return _add_primitive_split("turn left")
    raise ValueError(f"Unknown SCAN split {split!r}; valid splits are {', '.join(SPLITS)}.")


def _write_pairs(path: pathlib.Path, pairs: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"IN: {command} OUT: {actions}\n" for command, actions in pairs))


def export(out_dir: str) -> None:
    """Write tasks.txt and every split in the original release's file layout and line format."""
    root = pathlib.Path(out_dir)
    _write_pairs(root / "tasks.txt", list(_all_pairs()))
    for split in SPLITS:
        folder, pattern = SPLIT_FILES[split]
        for part, pairs in load_split(split).items():
            _write_pairs(root / folder / pattern.format(part=part), pairs)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "export":
        sys.exit("usage: python -m experiments.seq2seq.scan export OUT_DIR")
    export(argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
