"""Translation metrics over a whole evaluation set: sacreBLEU corpus BLEU and exact match."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def bleu_tokenizer_for(target_language: str, override: str = "") -> str:
    """sacreBLEU's tokenizer for a target language: `zh` for Chinese, `13a` otherwise."""
    if override:
        return override
    return "zh" if target_language.lower().startswith("zh") else "13a"


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
) -> tuple[float, str]:
    """sacreBLEU of detokenized hypotheses against one reference each.

    `tokenize` is sacreBLEU's tokenizer (`13a`, `zh`, `char`, ...); `lowercase` compares
    case-insensitively, as many published Multi30k numbers do. Returns the score in [0, 100]
    and sacreBLEU's signature, which records how it was computed.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"BLEU needs one reference per hypothesis, got {len(hypotheses)} hypotheses and "
            f"{len(references)} references."
        )
    if not hypotheses:
        raise ValueError("BLEU of an empty set is undefined; evaluate on at least one pair.")
    if tokenize not in sacrebleu.metrics.BLEU.TOKENIZERS:
        raise ValueError(
            f"sacreBLEU has no tokenizer {tokenize!r}; set --config.bleu_tokenizer to one of "
            f"{', '.join(sacrebleu.metrics.BLEU.TOKENIZERS)}."
        )
    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase, tokenize=tokenize)
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(bleu.get_signature())


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference, character for character."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"Exact match needs one reference per hypothesis, got {len(hypotheses)} hypotheses "
            f"and {len(references)} references."
        )
    if not hypotheses:
        raise ValueError("Exact match of an empty set is undefined; evaluate on at least one pair.")
    matches = sum(
        hypothesis == reference
        for hypothesis, reference in zip(hypotheses, references, strict=True)
    )
    return matches / len(hypotheses)
