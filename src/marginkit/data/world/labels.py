"""Label-noise models of the gold-reward world: how a simulated annotator turns two true rewards into a label.

`WorldConfig.label_noise` picks one of five models. Each gives P(a chosen) for a pair of
responses a, b with true rewards g_a, g_b and true gap gap = g_a - g_b:

- `bt` (Bradley-Terry, logit; Bradley & Terry 1952):   P(a) = sigmoid(gap / T)
- `thurstone` (probit; Thurstone 1927, case V):         P(a) = Phi(gap / T)
- `flip` (gap-independent flips, the cDPO / robust-DPO noise model, arXiv:2403.00409):
      P(a) = 1 - eps if gap > 0, eps if gap < 0, 1/2 if gap = 0
- `annotators` (a pool of annotators of noise s_1..s_K): pair i is labelled by annotator
      k_i ~ Uniform{0..K-1}, who perceives each response's reward as g_hat = g + s_k eta
      (eta ~ N(0, 1), independent per response) and picks the higher g_hat (a on ties), so
      P(a | k) = P(gap + s_k (eta_a - eta_b) >= 0) = Phi(gap / (sqrt(2) s_k))
- `length_bias` (annotators who reward length too): with n_a, n_b the responses' word counts,
      P(a) = sigmoid((gap + lambda (n_a - n_b)) / T)

Phi is the standard normal CDF; T is `noise`, eps `flip_rate`, s_k `annotator_noises`, lambda
`length_weight` (reward units per word). T = 0 (or s_k = 0) makes a model a step: the (perceived)
better response, a on exact ties.

Ratings (`score_chosen`, `score_rejected`) are Likert reads of a reward x:
Likert(x) = clip(floor(4.5 + 2 x + 0.5), 1, 10), with

- bt, thurstone, flip:  x = g + e, e ~ N(0, rating_noise^2), independent of the label;
- annotators:           x = g_hat, the labelling annotator's own perception (no extra noise);
- length_bias:          x = g + lambda (n - 7) + e (7 = the median response length, which keeps
                        the rating scale centred).

Annotators also state a confidence on Llama 2's 4-level scale (arXiv:2307.09288 sec. 3.2.1) from
their perceived gap d = |g_hat_a - g_hat_b|: 3 "significantly better" if d >= 2, 2 "better" if
d >= 1, 1 "slightly better" if d >= 0.5, 0 "negligibly better/unsure" otherwise. It becomes the
pair's `margin` (the data's label margin, read by `margins.label` with source=margin).

Draw order, after all texts of a split: the label draws (bt, thurstone, flip, length_bias: one
uniform per pair; annotators: one annotator index per pair, then eta [n, 2]), then the rating noise
[n, 2] (none for annotators). So every model sees the same texts, and bt draws exactly what the
world drew before label_noise existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from marginkit.data.world.lexicon import PUNCTUATION, tokenize_words

# The WorldConfig these functions read (noise, rating_noise, flip_rate, annotator_noises, length_weight). Typed as
# Any: world.py imports this module, and an import back (even under TYPE_CHECKING) would be a cycle.
WorldConfig = Any

if TYPE_CHECKING:
    from marginkit.data.schema import Pair

__all__ = [
    "LABEL_MODELS",
    "LABEL_PARAMETERS",
    "CONFIDENCE_LEVELS",
    "LabelModel",
    "Labels",
    "normal_cdf",
    "bt_probability",
    "thurstone_probability",
    "flip_probability",
    "annotator_probability",
    "length_bias_probability",
    "likert",
    "confidence_level",
    "count_words",
    "draw_labels",
    "flip_rates_by_gap_quartile",
]

_RATING_OFFSET, _RATING_SCALE = 4.5, 2.0  # the policy's median reward (~0.5) rates 5-6 of 10
_MEDIAN_WORDS = 7  # median response length of the base policy (docs/world.md, "The task")
# Llama 2's preference levels, indexed by the level number (arXiv:2307.09288 sec. 3.2.1)
CONFIDENCE_LEVELS: tuple[str, ...] = (
    "negligibly better/unsure",
    "slightly better",
    "better",
    "significantly better",
)
_CONFIDENCE_THRESHOLDS = (0.5, 1.0, 2.0)  # perceived gap reaching level 1, 2, 3


# --- P(a chosen) per model: pure functions of [n] arrays ------------------------------------------


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """[n] Phi(x) = (1 + erf(x / sqrt 2)) / 2, computed as erfc(-x / sqrt 2) / 2 (same value,
    no cancellation in the lower tail). Phi(0) = 0.5, Phi(2) = 0.977250."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.ravel()]).reshape(x.shape)


def _step(gap: np.ndarray) -> np.ndarray:
    """[n] 1 where gap >= 0 (a on exact ties), else 0."""
    return (np.asarray(gap) >= 0).astype(np.float64)


def bt_probability(gap: np.ndarray, temperature: float) -> np.ndarray:
    """[n] P(a chosen) = sigmoid(gap / T); the step at T = 0. gap 1, T 0.5: sigmoid(2) = 0.880797."""
    if temperature == 0:
        return _step(gap)
    return 0.5 * (1.0 + np.tanh(np.asarray(gap) / (2.0 * temperature)))  # = sigmoid(gap / T), overflow-free


def thurstone_probability(gap: np.ndarray, temperature: float) -> np.ndarray:
    """[n] P(a chosen) = Phi(gap / T); the step at T = 0. gap 1, T 0.5: Phi(2) = 0.977250."""
    if temperature == 0:
        return _step(gap)
    return normal_cdf(np.asarray(gap) / temperature)


def flip_probability(gap: np.ndarray, flip_rate: float) -> np.ndarray:
    """[n] P(a chosen) = 1 - eps if gap > 0, eps if gap < 0, 1/2 on exact ties (eps = flip_rate)."""
    gap = np.asarray(gap)
    return np.where(gap > 0, 1.0 - flip_rate, np.where(gap < 0, flip_rate, 0.5))


def annotator_probability(gap: np.ndarray, annotator_noise: np.ndarray | float) -> np.ndarray:
    """[n] P(a chosen | annotator of noise s) = Phi(gap / (sqrt(2) s)); the step where s = 0.
    gap 1, s 0.5: Phi(1.414214) = 0.921350. `annotator_noise` is [n] (one s per pair) or a float."""
    gap = np.asarray(gap, dtype=np.float64)
    s = np.broadcast_to(np.asarray(annotator_noise, dtype=np.float64), gap.shape)
    scale = np.where(s > 0, math.sqrt(2.0) * s, 1.0)  # [n], 1 where s = 0 (the step replaces it)
    return np.where(s > 0, normal_cdf(gap / scale), _step(gap))


def length_bias_probability(gap: np.ndarray, words_a: np.ndarray, words_b: np.ndarray, length_weight: float,
                            temperature: float) -> np.ndarray:  # fmt: skip
    """[n] P(a chosen) = sigmoid((gap + lambda (n_a - n_b)) / T); the step at T = 0.
    gap 0.2, n_a 10, n_b 4, lambda 0.1, T 0.5: sigmoid(0.8 / 0.5) = sigmoid(1.6) = 0.832018."""
    perceived = np.asarray(gap) + length_weight * (np.asarray(words_a) - np.asarray(words_b))
    return bt_probability(perceived, temperature)


# --- ratings, confidence, word counts --------------------------------------------------------------


def likert(reward: np.ndarray) -> np.ndarray:
    """Integer ratings 1..10 of rewards (any shape): clip(floor(4.5 + 2 x + 0.5), 1, 10)."""
    return np.clip(np.floor(_RATING_OFFSET + _RATING_SCALE * np.asarray(reward) + 0.5), 1, 10).astype(
        np.int64
    )


def confidence_level(perceived_gap: np.ndarray) -> np.ndarray:
    """[n] Llama 2 level 0..3 of |perceived gap| d: 3 if d >= 2, 2 if d >= 1, 1 if d >= 0.5, else 0
    (names in `CONFIDENCE_LEVELS`)."""
    d = np.abs(np.asarray(perceived_gap, dtype=np.float64))
    return sum((d >= t).astype(np.int64) for t in _CONFIDENCE_THRESHOLDS)


def count_words(text: str) -> int:
    """Words of a text: `tokenize_words` tokens that are not punctuation."""
    return sum(tok not in PUNCTUATION for tok in tokenize_words(text))


# --- drawing the labels of a split -----------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """The label draws of n pairs (a, b = the first and second policy sample).

    a_wins [n] bool; p_a [n] P(a chosen) under the model (given the annotator); ratings [n, 2]
    int64 Likert ratings of (a, b); annotator [n] pool indices and confidence [n] levels 0..3,
    or None when the model has no annotators.
    """

    a_wins: np.ndarray
    p_a: np.ndarray
    ratings: np.ndarray
    annotator: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def margin(self, i: int) -> float | None:
        """Pair i's label margin: its confidence level, or None without annotators."""
        return None if self.confidence is None else float(self.confidence[i])

    def metadata(self, i: int) -> dict[str, Any]:
        """Pair i's model-specific metadata (annotators: the annotator index and the level's name)."""
        if self.annotator is None or self.confidence is None:
            return {}
        return {"annotator": int(self.annotator[i]), "confidence": CONFIDENCE_LEVELS[int(self.confidence[i])]}


def _coin(p_a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n] a wins where u < P(a), u ~ U[0, 1) [n]; drawn even for a step (u < 1 always, u < 0 never),
    so that the rating draws never move."""
    return rng.random(len(p_a)) < p_a


def _read_ratings(reward: np.ndarray, rating_noise: float, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] Likert(reward + e), e ~ N(0, rating_noise^2) [n, 2]."""
    return likert(reward + rating_noise * rng.standard_normal(reward.shape))


def _draw_with(probability: Callable[[np.ndarray, WorldConfig], np.ndarray]) -> LabelDraw:
    """The draw of a model whose label depends on the true gap only and whose ratings are
    independent noisy reads of the true rewards (bt, thurstone, flip)."""

    def draw(
        cfg: WorldConfig, gold: np.ndarray, texts: Sequence[tuple[str, str]], rng: np.random.Generator
    ) -> Labels:
        p_a = probability(gold[:, 0] - gold[:, 1], cfg)  # [n]
        a_wins = _coin(p_a, rng)  # [n]
        return Labels(a_wins, p_a, _read_ratings(gold, cfg.rating_noise, rng))

    return draw


def _draw_annotators(cfg: WorldConfig, gold: np.ndarray, texts: Sequence[tuple[str, str]],
                     rng: np.random.Generator) -> Labels:  # fmt: skip
    n = len(gold)
    annotator = rng.integers(len(cfg.annotator_noises), size=n)  # [n]
    s = np.asarray(cfg.annotator_noises, dtype=np.float64)[annotator]  # [n]
    perceived = gold + s[:, None] * rng.standard_normal((n, 2))  # [n, 2] g_hat of a, b
    perceived_gap = perceived[:, 0] - perceived[:, 1]  # [n]
    return Labels(
        a_wins=perceived_gap >= 0,
        p_a=annotator_probability(gold[:, 0] - gold[:, 1], s),
        ratings=likert(perceived),
        annotator=annotator,
        confidence=confidence_level(perceived_gap),
    )


def _draw_length_bias(cfg: WorldConfig, gold: np.ndarray, texts: Sequence[tuple[str, str]],
                      rng: np.random.Generator) -> Labels:  # fmt: skip
    words = np.array([[count_words(a), count_words(b)] for a, b in texts], dtype=np.float64)  # [n, 2]
    words = words.reshape(-1, 2)  # [0, 2] for an empty split
    gap, lam = gold[:, 0] - gold[:, 1], cfg.length_weight  # [n]
    p_a = length_bias_probability(gap, words[:, 0], words[:, 1], lam, cfg.noise)  # [n]
    a_wins = _coin(p_a, rng)  # [n]
    ratings = _read_ratings(gold + lam * (words - _MEDIAN_WORDS), cfg.rating_noise, rng)  # [n, 2]
    return Labels(a_wins, p_a, ratings)


LabelDraw = Callable[[WorldConfig, np.ndarray, Sequence[tuple[str, str]], np.random.Generator], Labels]


@dataclass(frozen=True)
class LabelModel:
    """A label-noise model: its draw and the `WorldConfig` fields (of `LABEL_PARAMETERS`) it reads."""

    draw: LabelDraw
    uses: frozenset[str]


# WorldConfig fields that only some label models read; a model rejects a non-default value of the others.
LABEL_PARAMETERS: tuple[str, ...] = (
    "noise",
    "rating_noise",
    "flip_rate",
    "annotator_noises",
    "length_weight",
)

LABEL_MODELS: dict[str, LabelModel] = {
    "bt": LabelModel(_draw_with(lambda gap, cfg: bt_probability(gap, cfg.noise)),
                     frozenset({"noise", "rating_noise"})),
    "thurstone": LabelModel(_draw_with(lambda gap, cfg: thurstone_probability(gap, cfg.noise)),
                            frozenset({"noise", "rating_noise"})),
    "flip": LabelModel(_draw_with(lambda gap, cfg: flip_probability(gap, cfg.flip_rate)),
                       frozenset({"flip_rate", "rating_noise"})),
    "annotators": LabelModel(_draw_annotators, frozenset({"annotator_noises"})),
    "length_bias": LabelModel(_draw_length_bias, frozenset({"noise", "length_weight", "rating_noise"})),
}  # fmt: skip


def draw_labels(cfg: WorldConfig, gold: np.ndarray, texts: Sequence[tuple[str, str]],
                rng: np.random.Generator) -> Labels:  # fmt: skip
    """Labels of n pairs under `cfg.label_noise`: gold [n, 2] true rewards of (a, b), texts [n]
    (a, b) responses; draws from `rng` in the order of the module docstring."""
    if gold.ndim != 2 or gold.shape[1] != 2 or len(gold) != len(texts):
        raise ValueError(f"draw_labels: gold {gold.shape} must be [n, 2] with n = {len(texts)} texts")
    return LABEL_MODELS[cfg.label_noise].draw(cfg, gold, texts, rng)


# --- measuring -------------------------------------------------------------------------------------


def flip_rates_by_gap_quartile(pairs: Sequence[Pair]) -> tuple[float, float, float, float, float]:
    """Flip rates (share of labels against the true order) of the pairs whose true gap is not an
    exact tie, by quartile of |true gap| (Q1 the nearest ties .. Q4 the clearest wins, equal
    counts), then over all of them: (Q1, Q2, Q3, Q4, all). docs/world.md's table is this."""
    gaps = np.array([p.gold_gap for p in pairs], dtype=np.float64)
    flipped = gaps < 0  # = metadata["flipped"]: the chosen response is truly worse
    decided = gaps != 0
    order = np.argsort(np.abs(gaps[decided]), kind="stable")
    quartiles = [float(flipped[decided][q].mean()) for q in np.array_split(order, 4)]
    return (*quartiles, float(flipped[decided].mean()))  # type: ignore[return-value]
