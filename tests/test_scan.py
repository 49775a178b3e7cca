"""Tests for the grammar-generated SCAN data set and its splits."""

import re

import pytest

from experiments.seq2seq import scan

LEFT, RIGHT = "I_TURN_LEFT", "I_TURN_RIGHT"

# Expected meanings worked out by hand from the grammar's semantics.
HAND_CHECKED = {
    "jump twice after walk left": [LEFT, "I_WALK", "I_JUMP", "I_JUMP"],
    "turn around left": [LEFT, LEFT, LEFT, LEFT],
    "turn opposite right thrice": [RIGHT] * 6,
    "jump around right": [RIGHT, "I_JUMP"] * 4,
    "look left and turn right twice": [LEFT, "I_LOOK", RIGHT, RIGHT],
    "run opposite right twice and look": [RIGHT, RIGHT, "I_RUN", RIGHT, RIGHT, "I_RUN", "I_LOOK"],
    "turn left after turn opposite right": [RIGHT, RIGHT, LEFT],
    "walk after run around left twice": [LEFT, "I_RUN"] * 8 + ["I_WALK"],
    # walk around right thrice is 12 (turn, walk) pairs, executed before the jump part.
    "jump opposite left after walk around right thrice": [RIGHT, "I_WALK"] * 12
    + [LEFT, LEFT, "I_JUMP"],
    "jump around left thrice and walk around right thrice": [LEFT, "I_JUMP"] * 12
    + [RIGHT, "I_WALK"] * 12,
}

# (train lines, distinct train commands, test commands) from the original release.
EXPECTED_SIZES = {
    "simple": (16_728, 16_728, 4_182),
    "length": (16_990, 16_990, 3_920),
    "addprim_jump": (14_670, 13_204, 7_706),
    "addprim_turn_left": (21_890, 19_702, 1_208),
}

LINE = re.compile(r"^IN: (.+) OUT: (.+)$")


@pytest.fixture(scope="module")
def splits():
    return {split: scan.load_split(split) for split in scan.SPLITS}


def _read_pairs(path):
    lines = path.read_text().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), path
    return [(match.group(1), match.group(2)) for match in matches]


@pytest.mark.parametrize("command", sorted(HAND_CHECKED))
def test_interpret_matches_hand_computed_meaning(command):
    assert scan.interpret(command) == " ".join(HAND_CHECKED[command])


def test_interpret_rejects_malformed_commands():
    for command in ("", "turn", "walk up", "fly left", "walk sideways left", "and walk"):
        with pytest.raises(ValueError):
            scan.interpret(command)


def test_all_commands_size_and_shape():
    commands = scan.all_commands()
    assert len(commands) == 20_910
    assert len(set(commands)) == 20_910
    assert commands == scan.all_commands()
    assert max(len(command.split()) for command in commands) == 9
    assert max(len(scan.interpret(command).split()) for command in commands) == 48


def test_vocabularies():
    commands = scan.all_commands()
    assert len(scan.COMMAND_WORDS) == 13
    assert len(scan.ACTIONS) == 6
    assert {word for command in commands for word in command.split()} == set(scan.COMMAND_WORDS)
    used_actions = {action for command in commands for action in scan.interpret(command).split()}
    assert used_actions == set(scan.ACTIONS)


@pytest.mark.parametrize("split", scan.SPLITS)
def test_split_sizes_match_release(splits, split):
    train_lines, train_distinct, test_size = EXPECTED_SIZES[split]
    train, test = splits[split]["train"], splits[split]["test"]
    assert len(train) == train_lines
    assert len({command for command, _ in train}) == train_distinct
    assert len(test) == len({command for command, _ in test}) == test_size


@pytest.mark.parametrize("split", scan.SPLITS)
def test_splits_are_disjoint_and_cover_all_commands(splits, split):
    train = {command for command, _ in splits[split]["train"]}
    test = {command for command, _ in splits[split]["test"]}
    assert not train & test
    assert train | test == set(scan.all_commands())


def test_splits_are_deterministic(splits):
    # Clear the caches so the data is regenerated rather than returned from memory.
    scan._all_commands.cache_clear()
    scan._all_pairs.cache_clear()
    for split in scan.SPLITS:
        assert scan.load_split(split) == splits[split]


def test_length_split_threshold(splits):
    train_lengths = [len(actions.split()) for _, actions in splits["length"]["train"]]
    test_lengths = [len(actions.split()) for _, actions in splits["length"]["test"]]
    assert max(train_lengths) == 22
    assert min(test_lengths) == 24


def test_addprim_splits_hold_out_composed_primitive(splits):
    jump = splits["addprim_jump"]
    assert all("jump" in command.split() for command, _ in jump["test"])
    assert all("jump" not in command.split() or command == "jump" for command, _ in jump["train"])
    assert sum(command == "jump" for command, _ in jump["train"]) == 14_670 - 13_203

    turn_left = splits["addprim_turn_left"]
    assert all(" turn left" in f" {command} " for command, _ in turn_left["test"])
    assert sum(command == "turn left" for command, _ in turn_left["train"]) == 21_890 - 19_701
    # Only the contiguous phrase counts, so these stay in train.
    train_commands = {command for command, _ in turn_left["train"]}
    assert {"turn opposite left", "turn around left twice"} <= train_commands


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="valid splits are simple, length"):
        scan.load_split("mcd1")


def test_export_round_trips(splits, tmp_path):
    scan.export(str(tmp_path))
    assert _read_pairs(tmp_path / "tasks.txt") == [
        (command, scan.interpret(command)) for command in scan.all_commands()
    ]
    for split in scan.SPLITS:
        folder, pattern = scan.SPLIT_FILES[split]
        for part in ("train", "test"):
            path = tmp_path / folder / pattern.format(part=part)
            assert _read_pairs(path) == splits[split][part]


def test_export_file_names(tmp_path):
    scan.main(["export", str(tmp_path)])
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.txt"))
    assert written == [
        "add_prim_split/tasks_test_addprim_jump.txt",
        "add_prim_split/tasks_test_addprim_turn_left.txt",
        "add_prim_split/tasks_train_addprim_jump.txt",
        "add_prim_split/tasks_train_addprim_turn_left.txt",
        "length_split/tasks_test_length.txt",
        "length_split/tasks_train_length.txt",
        "simple_split/tasks_test_simple.txt",
        "simple_split/tasks_train_simple.txt",
        "tasks.txt",
    ]


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="usage: python -m experiments.seq2seq.scan export"):
        scan.main(["download"])
