"""Small data the tests write themselves."""

import gzip
import pathlib

import numpy as np

# German -> English word by word, so a tiny model has something learnable.
LEXICON = {
    "ein": "a", "hund": "dog", "katze": "cat", "mann": "man", "frau": "woman", "kind": "child",
    "läuft": "runs", "schläft": "sleeps", "spielt": "plays", "liest": "reads", "im": "in the",
    "park": "park", "haus": "house", "garten": "garden", "und": "and", "mit": "with",
    "roten": "red", "großen": "big", "kleinen": "small", "ball": "ball",
}  # fmt: skip

# The Multi30k file layout, one sentence a line.
FOLDER_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")


def sentence_pairs(count: int, seed: int, max_words: int = 14) -> list[tuple[str, str]]:
    """`count` (German, English) pairs of 1..max_words words, lengths spread evenly."""
    rng = np.random.default_rng(seed)
    words = list(LEXICON)
    pairs = []
    for _ in range(count):
        german = [words[i] for i in rng.integers(0, len(words), rng.integers(1, max_words + 1))]
        pairs.append((" ".join(german), " ".join(LEXICON[word] for word in german)))
    return pairs


def write_parallel_folder(
    folder: pathlib.Path, sizes=(96, 16, 12, 12), source: str = "de", target: str = "en"
) -> pathlib.Path:
    """A folder like Multi30k's: `<split>.<language>` files (test files gzipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, (split, size) in enumerate(zip(FOLDER_SPLITS, sizes, strict=True)):
        pairs = sentence_pairs(size, seed=number)
        for language, side in ((source, 0), (target, 1)):
            text = "".join(pair[side] + "\n" for pair in pairs)
            path = folder / f"{split}.{language}"
            if split.startswith("test"):
                with gzip.open(f"{path}.gz", "wt", encoding="utf-8") as file:
                    file.write(text)
            else:
                path.write_text(text, encoding="utf-8")
    return folder


# Hand-written Chinese-English pairs for tokenizer and BLEU checks on a non-Latin script.
CHINESE_ENGLISH = [
    ("我喜欢猫。", "I like cats."),
    ("他在公园里跑步。", "He runs in the park."),
    ("今天天气很好。", "The weather is nice today."),
    ("我们一起吃饭吧。", "Let's eat together."),
    ("这本书很有意思。", "This book is interesting."),
    ("她每天早上喝咖啡。", "She drinks coffee every morning."),
    ("孩子们在学校学习。", "The children study at school."),
    ("我的朋友住在北京。", "My friend lives in Beijing."),
    ("请把门关上。", "Please close the door."),
    ("火车八点出发。", "The train leaves at eight."),
    ("他买了一辆红色的自行车。", "He bought a red bicycle."),
    ("明天我们去海边。", "Tomorrow we go to the beach."),
]


def write_chinese_english_folder(folder: pathlib.Path, repeats: int = 4) -> pathlib.Path:
    """train (the pairs repeated), val and test_2016_flickr files for `zh` and `en`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": CHINESE_ENGLISH * repeats,
        "val": CHINESE_ENGLISH[:6],
        "test_2016_flickr": CHINESE_ENGLISH[6:],
    }
    for split, pairs in splits.items():
        for language, side in (("zh", 0), ("en", 1)):
            text = "".join(pair[side] + "\n" for pair in pairs)
            (folder / f"{split}.{language}").write_text(text, encoding="utf-8")
    return folder
