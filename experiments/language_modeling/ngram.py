"""A count-based reference: an interpolated Kneser-Ney character n-gram model (numpy).

Chen & Goodman (1998): the highest order uses counts, lower orders continuation counts, each
with one absolute discount D = n1 / (n1 + 2 n2), interpolated down to a uniform distribution
over the training characters plus one symbol for every unseen character.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

BOS = 0  # pads the context before the first character


@dataclasses.dataclass(frozen=True)
class Order:
    """The counts of one order k: k-grams as integers (oldest character most significant)."""

    grams: np.ndarray  # sorted unique k-gram codes
    counts: np.ndarray  # count (highest order) or continuation count per k-gram
    contexts: np.ndarray  # sorted unique (k-1)-gram contexts
    context_totals: np.ndarray  # sum of counts per context
    context_types: np.ndarray  # number of distinct next characters per context
    discount: float


@dataclasses.dataclass(frozen=True)
class NgramModel:
    alphabet: dict[str, int]  # character -> id (1..); len + 1 is the unseen character
    orders: tuple[Order, ...]  # order 1, 2, ..., n

    @property
    def base(self) -> int:
        return len(self.alphabet) + 2  # BOS, the characters, unseen


def _ids(model_alphabet: dict[str, int], text: str, order: int) -> np.ndarray:
    unseen = len(model_alphabet) + 1
    ids = [model_alphabet.get(character, unseen) for character in text]
    return np.array([BOS] * (order - 1) + ids, np.int64)


def _codes(ids: np.ndarray, order: int, base: int) -> list[np.ndarray]:
    """k-gram codes ending at every predicted position, for k = 1..order."""
    length = len(ids) - (order - 1)
    codes = [ids[order - 1 :]]
    for k in range(2, order + 1):
        oldest = ids[order - k : order - k + length]
        codes.append(oldest * base ** (k - 1) + codes[-1])
    return codes


def _order(grams: np.ndarray, counts: np.ndarray, base: int) -> Order:
    contexts, starts = np.unique(grams // base, return_index=True)
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    discount = float(n1 / (n1 + 2 * n2)) if n1 + n2 else 0.5
    return Order(
        grams=grams,
        counts=counts,
        contexts=contexts,
        context_totals=np.add.reduceat(counts, starts),
        context_types=np.diff(np.append(starts, len(grams))),
        discount=min(max(discount, 1e-3), 0.999),
    )


def fit(text: str, order: int) -> NgramModel:
    """Counts of `text` (newlines included) for an n-gram model of `order` characters."""
    alphabet = {c: i + 1 for i, c in enumerate(sorted(set(text)))}
    base = len(alphabet) + 2
    if base**order >= 2**62:
        raise ValueError(
            f"An order-{order} n-gram over {base - 2} distinct characters does not fit in 64-bit "
            "codes; lower config.reference_ngram_order."
        )
    codes = _codes(_ids(alphabet, text, order), order, base)
    grams, counts = np.unique(codes[-1], return_counts=True)
    orders = [_order(grams, counts, base)]
    for k in range(order - 1, 0, -1):
        # Continuation count of a k-gram: how many distinct characters precede it.
        suffixes = orders[0].grams % base**k
        grams, counts = np.unique(suffixes, return_counts=True)
        orders.insert(0, _order(grams, counts, base))
    return NgramModel(alphabet, tuple(orders))


def _lookup(keys: np.ndarray, table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` of `keys` in the sorted `table`, 0 where a key is absent."""
    index = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[index] == keys, values[index], 0)


def log_probabilities(model: NgramModel, text: str) -> np.ndarray:
    """Natural log-probability of each character of `text` given the ones before it."""
    order = len(model.orders)
    codes = _codes(_ids(model.alphabet, text, order), order, model.base)
    probabilities = np.full(len(codes[0]), 1.0 / (model.base - 1))
    for counts_of, grams in zip(model.orders, codes, strict=True):
        count = _lookup(grams, counts_of.grams, counts_of.counts)
        contexts = grams // model.base
        total = _lookup(contexts, counts_of.contexts, counts_of.context_totals)
        types = _lookup(contexts, counts_of.contexts, counts_of.context_types)
        seen = total > 0
        safe_total = np.where(seen, total, 1)
        discount = counts_of.discount
        interpolated = (
            np.maximum(count - discount, 0) / safe_total
            + discount * types / safe_total * probabilities
        )
        probabilities = np.where(seen, interpolated, probabilities)
    return np.log(probabilities)


def bits_per_byte(model: NgramModel, lines: Sequence[str]) -> float:
    """Bits per UTF-8 byte of `lines`, each ended by a newline."""
    text = "".join(line + "\n" for line in lines)
    nats = -float(np.sum(log_probabilities(model, text)))
    return nats / math.log(2) / len(text.encode("utf-8"))
