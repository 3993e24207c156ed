"""A shipped, seeded text task with a learnable rule: sentiment from marker words under negation and intensifiers.

A sentence is 6-24 pseudo-words. A few are markers: positive ones count +1, negative ones -1; "not" before a marker
flips it, "very" before a marker doubles it. The label is the sign of the sum: negative, neutral or positive.
A fraction `noise` of the train labels is redrawn at random (the test labels are clean), so a student fitting
hard labels learns some noise, and a teacher's soft targets can carry what the rule says instead.
Generated in memory with `data_seed`; tokenized like any text data set (data=text).
"""

from __future__ import annotations

import random

from kdexp.config.rules import check_number

from .base import DATASETS, check_int
from .text import TextDataModule

CLASSES = ("negative", "neutral", "positive")
SYLLABLES = ("ba", "ko", "te", "su", "ri", "ma", "no", "pe", "li", "da", "fu", "go", "ze", "vi", "ra", "to")


def pseudo_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def sentiment_rows(n: int, rng: random.Random, lexicon: dict[str, list[str]], noise: float) -> dict[str, list]:
    """n sentences and labels (0 negative, 1 neutral, 2 positive); `noise` of them get a random label."""
    texts, labels = [], []
    for _ in range(n):
        words = [rng.choice(lexicon["filler"]) for _ in range(rng.randint(6, 24))]
        score = 0
        for _ in range(rng.randint(0, 3)):
            sign = rng.choice((1, -1))
            marker = [rng.choice(lexicon["positive" if sign > 0 else "negative"])]
            modifier = rng.random()
            if modifier < 0.3:
                marker, sign = ["not", *marker], -sign
            elif modifier < 0.45:
                marker, sign = ["very", *marker], 2 * sign
            at = rng.randint(0, len(words))
            words[at:at] = marker
            score += sign
        label = 0 if score < 0 else 1 if score == 0 else 2
        if rng.random() < noise:
            label = rng.randrange(len(CLASSES))
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}


@DATASETS.register("text_synthetic")
class SyntheticTextDataModule(TextDataModule):
    """The sentiment rule above: `num_samples` train and `num_test` test sentences, `noise` of train labels random."""

    name = "text_synthetic"

    def __init__(self, *, num_samples: int = 2000, num_test: int = 1000, noise: float = 0.1, data_seed: int = 0,
                 **common):
        super().__init__(**common)
        check_int("num_samples", num_samples, 2)
        check_int("num_test", num_test, 1)
        check_int("data_seed", data_seed, 0)
        check_number("data.noise", noise, ge=0, lt=1)
        self.num_samples, self.num_test, self.noise, self.data_seed = num_samples, num_test, float(noise), data_seed

    def source_description(self) -> dict:
        return {"generator": "sentiment", "num_samples": self.num_samples, "num_test": self.num_test,
                "noise": self.noise, "data_seed": self.data_seed}

    def read_splits(self) -> dict[str, dict[str, list]]:
        rng = random.Random(self.data_seed)
        taken = {"not", "very"}
        lexicon = {"positive": pseudo_words(rng, 6, taken), "negative": pseudo_words(rng, 6, taken),
                   "filler": pseudo_words(rng, 200, taken)}
        return {"train": sentiment_rows(self.num_samples, rng, lexicon, self.noise),
                "test": sentiment_rows(self.num_test, rng, lexicon, 0.0)}
