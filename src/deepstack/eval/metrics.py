"""Scoring answers: the normalisation and exact match of the built-in task, and accuracy by group."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable


def normalise(text: str) -> str:
    """Exact-match normalisation (VQA style): lower case, punctuation to spaces, the articles a/an/the
    dropped, runs of white space to one space."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def exact_match(prediction: str, answer: str) -> bool:
    """True when both strings are equal after ``normalise``."""
    return normalise(prediction) == normalise(answer)


def tally(predictions: Iterable[dict], by: str | None = None) -> dict[str, tuple[int, int]]:
    """(correct, total) overall under ``"all"`` and, with ``by``, per value of each prediction's ``by`` field
    (a prediction without that field counts only in ``"all"``)."""
    totals, correct = defaultdict(int), defaultdict(int)
    for prediction in predictions:
        groups = ["all"] + ([str(prediction[by])] if by is not None and by in prediction else [])
        for group in groups:
            totals[group] += 1
            correct[group] += bool(prediction["correct"])
    return {group: (correct[group], totals[group]) for group in totals}


def accuracy(predictions: Iterable[dict], by: str | None = None) -> dict[str, float]:
    """The fraction of ``correct`` predictions, grouped as in ``tally``."""
    return {group: right / total for group, (right, total) in tally(predictions, by).items()}
