"""Bootstrap intervals of a mean, paired tests between leaderboard rows, ranks in a metric's
direction, and the digits a value is shown with.

Intervals
---------
:func:`bootstrap_interval`: a percentile bootstrap interval of a mean (the ``±`` of a leaderboard).

Comparing the rows of a metric column
-------------------------------------
A column of a dataset's leaderboard holds one row per (model, explainer). Every cell of a sweep
scores the same seeded sample of test images (fixed by the data, ``num_images`` and ``eval_seed``),
so two rows' per-image lists of one seed are aligned by position and the image is the unit of a
paired comparison (:func:`compare`):

- **Pairing.** Two rows are paired on the seeds they share whose cells scored the same images (the
  same image key: data, ``num_images``, ``eval_seed``, and lists of the same length). For each such
  seed the per-image differences are taken; with several seeds they are averaged over the seeds,
  image by image, so each image is counted once (the same images recur in every seed: they are not
  independent draws). The test therefore asks whether the difference holds across images for the
  trained models at hand (their average over seeds), not across retrainings; the ``±`` over
  seeds shows the training variance. An image whose score is undefined (NaN) in either row is
  dropped from that pair only. Rows with no such seed in common (other seeds, other images) are
  compared **unpaired**: each row's per-image scores averaged over its own seeds (pooled when its
  own cells differ in images), by the unpaired counterpart of the test, and the leaderboard says so.
  A pair with no image scored by both (or, unpaired, a row with no score) is not tested: its
  p-value is empty and it counts as not significantly different.
- **Test (default ``wilcoxon``).** The two-sided Wilcoxon signed-rank test of the per-image
  differences ``d``, rounded to 12 decimals first so that float roundoff neither splits ties nor
  turns equal scores into a non-zero difference. Zero differences (images the two rows score
  alike) are dropped before ranking, ``zero_method="wilcox"`` (Wilcoxon's own convention and
  scipy's default; for 0/1 scores such as the pointing game the test becomes McNemar's test on the
  discordant images: exact, i.e. the two-sided sign test, up to 50 of them, then its normal
  approximation without continuity correction); when every difference is zero the rows are
  identical on the images and ``p = 1``. With ``n <= 50`` non-zero differences the p-value is
  exact: the distribution of the positive rank sum over all ``2^n`` sign flips of the (mid)ranks
  of ``|d|`` (with no ties this is ``scipy.stats.wilcoxon(method="exact")``; with ties it is the
  exact conditional distribution, which scipy computes by permutation only up to ``n = 13`` and
  approximates above), two-sided ``min(1, 2 min(P(W+ <= w), P(W+ >= w)))``; above 50, the normal
  approximation with the tie correction of the variance and no continuity correction (the number
  ``scipy.stats.wilcoxon(method="asymptotic", correction=False)`` gives, computed here without
  scipy's per-call overhead). Unpaired counterpart: the two-sided Mann-Whitney U test
  (``scipy.stats.mannwhitneyu``; exact when there are no ties and a sample has at most 8 values,
  else the normal approximation with the tie and continuity corrections: scipy's ``auto`` rule,
  fixed here so that another scipy cannot change it).

  Why Wilcoxon rather than a paired bootstrap of the mean difference (``test="bootstrap"``, also
  available): per-image scores are bounded, skewed and often tied (curve areas near 0 or 1, 0/1
  hits), which a rank test takes as they are; it needs no resampling, so it is deterministic and
  its p-value has no floor, whereas a bootstrap p-value cannot go below ``1 / (B + 1)`` (1/1001
  with the 1000 resamples of the intervals) while Holm's first threshold over the
  ``k (k - 1) / 2`` pairs of ``k`` rows is ``alpha / (k (k - 1) / 2)``: from 11 rows on (55 pairs,
  0.05 / 55 < 1/1001) a bootstrap could not find any difference significant, and the published
  boards have 30 to 80 rows per column. What Wilcoxon tests is a shift of the differences'
  (pseudo-)median, not of their mean: the *direction* of a significant difference is read from the
  paired mean difference (the quantity the leaderboard ranks by), and in a strongly skewed case the
  two can disagree.
- **Bootstrap option.** ``test="bootstrap"``: ``B = RESAMPLES`` resamples of the images (one
  ``numpy.random.default_rng(BOOTSTRAP_SEED)`` draw of ``(B, n)`` indices) give the resampled mean
  differences ``m*``; the two-sided p-value of the null-centred bootstrap is
  ``(1 + #{|m* - m| >= |m|}) / (B + 1)`` with ``m`` the observed mean difference (all-zero
  differences: ``p = 1``). Unpaired: each row resampled on its own, ``m`` the difference of means.
- **Multiplicity.** Holm's step-down correction (:func:`holm`) over every tested pair of rows of
  the column (``k (k - 1) / 2`` tests for ``k`` rows with a mean; untested pairs are left out of
  the count). One family for the whole column, so every claim the column makes (which rows are
  tied with the best, every rank) comes from the same adjusted p-values and the probability of any
  false "significantly different" in the column is at most ``alpha`` (0.05 by default). Testing
  the best against the others alone (``k - 1`` tests) would find more rows not tied with the best,
  but could not back the ranks below 1.
- **Best, ties and ranks** (:func:`column_standings`). The best row has the best mean in the
  metric's direction (equal means: the first row in sorted order). Row ``q`` is *significantly
  better* than row ``r`` when their Holm-adjusted p-value is below ``alpha`` and the mean
  difference favours ``q``. A row is *tied with the best* unless the best is significantly better
  than it. Significance rank: 1 for a row tied with the best, otherwise 1 + the number of rows
  significantly better than it (the "1 + rows significantly better" rank, with ties at the top
  pinned to the best: a row no test separates from the best ranks 1 even when some other row beats
  it, which the tests' non-transitivity allows). The plain rank by mean (:func:`rank_column`) is
  kept beside it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as scipy_stats

RESAMPLES = 1000


LEVEL = 0.95


BOOTSTRAP_SEED = 0


ALPHA = 0.05


TESTS = ("wilcoxon", "bootstrap")


DEFAULT_TEST = "wilcoxon"


EXACT_LIMIT = 50  # exact signed-rank distribution up to this many non-zero differences


DECIMALS = 12  # differences are rounded to this many decimals before zeros and ties are found


PAIRED = "paired"


UNPAIRED = "unpaired"


UNTESTED = "untested"


BEST = "best"


# --- intervals and ranks -------------------------------------------------------------------
def finite(values: Iterable[Optional[float]]) -> np.ndarray:
    """``values`` as a float array, ``None`` and NaN dropped."""
    data = (values.astype(float, copy=False) if isinstance(values, np.ndarray) and values.dtype.kind in "fiub"
            else np.asarray([np.nan if v is None else v for v in values], dtype=float))
    return data[~np.isnan(data)]


def check_resamples(resamples: int) -> None:
    if not isinstance(resamples, (int, np.integer)) or isinstance(resamples, bool) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")


def bootstrap_interval(values: Iterable[Optional[float]], resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``None``/NaN dropped).

    ``resamples`` samples of ``n`` indices drawn with replacement by ``numpy.random.default_rng(seed)``
    (one ``integers(0, n, (resamples, n))`` draw), the mean of each, then the ``(1 - level) / 2``
    and ``(1 + level) / 2`` percentiles (numpy's linear interpolation). One value gives a zero
    width interval; none gives ``(nan, nan)``.
    """
    check_resamples(resamples)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    data = finite(values)
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    indices = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def rank_column(values: pd.Series, higher_is_better: bool) -> pd.Series:
    """1 = best in the metric's direction; ties share the better rank; NaN stays unranked."""
    return values.rank(method="min", ascending=not higher_is_better)


# --- tests ---------------------------------------------------------------------------------
def check_test(test: str) -> None:
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid tests: {', '.join(TESTS)}")


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.05), got {alpha!r}")


def midranks(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(ranks 1..n of values, tied values sharing their mean rank; the size of each group of
    equal values)``: ``scipy.stats.rankdata(values)`` and the tie counts, in one sort."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    counts = np.diff(np.append(starts, values.size))
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks, counts


def signed_rank_exact_p(differences: np.ndarray) -> float:
    """Two-sided exact p-value of the signed-rank statistic of non-zero ``differences``: the
    positive rank sum's distribution over all ``2^n`` sign flips of the (mid)ranks of ``|d|``,
    counted by convolution on doubled ranks (integers)."""
    ranks, _ = midranks(np.abs(differences))
    doubled = np.rint(2.0 * ranks).astype(np.int64)
    counts = np.zeros(int(doubled.sum()) + 1, dtype=np.int64)
    counts[0] = 1
    for value in doubled:
        counts[value:] = counts[value:] + counts[:counts.size - value]
    observed = int(doubled[differences > 0].sum())
    total = float(2 ** differences.size)
    low = counts[:observed + 1].sum() / total
    high = counts[observed:].sum() / total
    return float(min(1.0, 2.0 * min(low, high)))


def signed_rank_normal_p(differences: np.ndarray) -> float:
    """Two-sided p-value of the signed-rank statistic of non-zero ``differences`` by the normal
    approximation: ``z = (W+ - n(n+1)/4) / sd`` with ``sd^2 = n(n+1)(2n+1)/24 - sum(t^3 - t)/48``
    over the groups of ``t`` tied ``|d|``, no continuity correction; ``p = 2 Phi(-|z|)``. The same
    number as ``scipy.stats.wilcoxon(d, method="asymptotic", correction=False)``, without its
    per-call overhead (a column of ``k`` rows makes ``k (k - 1) / 2`` of these)."""
    n = differences.size
    ranks, tied = midranks(np.abs(differences))
    variance = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(tied.astype(float) ** 3 - tied)) / 48.0
    if variance <= 0.0:
        return 1.0
    z = (ranks[differences > 0].sum() - n * (n + 1) / 4.0) / math.sqrt(variance)
    return float(min(1.0, 2.0 * special.ndtr(-abs(z))))


def nonzero_differences(differences: Iterable[Optional[float]]) -> Tuple[np.ndarray, int]:
    """``(the differences rounded to DECIMALS, NaN and zeros dropped; how many were not NaN)``."""
    data = np.round(finite(differences), DECIMALS)
    return data[data != 0.0], int(data.size)


def wilcoxon_p(differences: Iterable[Optional[float]]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (NaN dropped, then zeros,
    ``zero_method="wilcox"``): exact up to ``EXACT_LIMIT`` non-zero differences, else scipy's
    tie-corrected normal approximation without continuity correction. All zero: 1; none: NaN."""
    data, defined = nonzero_differences(differences)
    if defined == 0:
        return float("nan")
    if data.size == 0:
        return 1.0
    if data.size <= EXACT_LIMIT:
        return signed_rank_exact_p(data)
    return signed_rank_normal_p(data)


def bootstrap_p(differences: Iterable[Optional[float]], resamples: int = RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value of the null-centred paired bootstrap of the mean difference:
    ``(1 + #{|m* - m| >= |m|}) / (resamples + 1)``. All zero: 1; none: NaN."""
    check_resamples(resamples)
    data = np.round(finite(differences), DECIMALS)
    if data.size == 0:
        return float("nan")
    if np.all(data == 0.0):
        return 1.0
    mean = data.mean()
    means = data[np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    return float((1 + np.count_nonzero(np.abs(means - mean) >= abs(mean))) / (resamples + 1))


def rank_sum_p(first: Iterable[Optional[float]], second: Iterable[Optional[float]]) -> float:
    """Two-sided Mann-Whitney U p-value of two independent samples (NaN dropped, values rounded to
    ``DECIMALS`` as the paired differences are): exact when there
    are no ties and a sample has at most 8 values, else the normal approximation with the tie and
    continuity corrections. Every value equal: 1; an empty sample: NaN."""
    a, b = np.round(finite(first), DECIMALS), np.round(finite(second), DECIMALS)
    if a.size == 0 or b.size == 0:
        return float("nan")
    pooled = np.concatenate([a, b])
    if np.all(pooled == pooled[0]):
        return 1.0
    ties = np.unique(pooled).size < pooled.size
    method = "exact" if not ties and min(a.size, b.size) <= 8 else "asymptotic"
    return float(scipy_stats.mannwhitneyu(a, b, alternative="two-sided", use_continuity=True,
                                          method=method).pvalue)


def bootstrap_unpaired_p(first: Iterable[Optional[float]], second: Iterable[Optional[float]],
                         resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value of the null-centred bootstrap of a difference of means, each sample
    resampled on its own (one generator: the first sample's ``(B, n1)`` draw, then the second's)."""
    check_resamples(resamples)
    a, b = finite(first), finite(second)
    if a.size == 0 or b.size == 0:
        return float("nan")
    difference = a.mean() - b.mean()
    if round(difference, DECIMALS) == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    means = (a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
             - b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1))
    return float((1 + np.count_nonzero(np.abs(means - difference) >= abs(difference))) / (resamples + 1))


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order: with the ``m`` p-values sorted
    ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``. NaN entries (untested) stay NaN
    and are not counted in ``m``. ``[0.01, 0.04, 0.03]`` gives ``[0.03, 0.06, 0.06]``."""
    p = np.asarray(list(p_values), dtype=float)
    defined = np.flatnonzero(~np.isnan(p))
    if np.any((p[defined] < 0.0) | (p[defined] > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[defined].min():g} to {p[defined].max():g}")
    adjusted = np.full(p.shape, np.nan)
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (order.size - position) * p[index]))
        adjusted[index] = running
    return adjusted


# --- comparing two rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class RowScores:
    """One leaderboard row's scores in one column: its mean (as shown) and, per seed, the key of
    the images its cell scored and the per-image scores (NaN: undefined)."""
    mean: float
    seeds: Dict[int, Tuple[str, np.ndarray]]

    def pooled(self) -> np.ndarray:
        """Per-image scores averaged over the row's seeds (NaN dropped), or all of them pooled when
        its cells scored different images."""
        lists = list(self.seeds.values())
        if not lists:
            return np.zeros(0)
        if len({key for key, _ in lists}) == 1 and len({scores.size for _, scores in lists}) == 1:
            return finite(nan_mean_rows(np.stack([scores for _, scores in lists])))
        return finite(np.concatenate([scores for _, scores in lists]))


def nan_mean_rows(stacked: np.ndarray) -> np.ndarray:
    """Column means of ``stacked`` ignoring NaN; a column of NaN gives NaN (without a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(stacked, axis=0)


@dataclass(frozen=True)
class Comparison:
    """Two rows compared: the unadjusted two-sided p-value (NaN: not tested), the mean difference
    first - second over what was compared, how (``paired``, ``unpaired``, ``untested``), the number
    of images (paired: images scored by both; unpaired: the two rows' counts) and seeds paired."""
    p: float
    difference: float
    pairing: str
    images: Tuple[int, ...]
    seeds: int = 0


def paired_differences(first: RowScores, second: RowScores) -> Tuple[Optional[np.ndarray], int]:
    """Per-image differences first - second, averaged over the seeds both rows have with the same
    images (NaN where undefined in every such seed), and how many seeds; ``None`` when no seed pairs."""
    seeds = [seed for seed in sorted(first.seeds) if seed in second.seeds
             and first.seeds[seed][0] == second.seeds[seed][0]
             and first.seeds[seed][1].size == second.seeds[seed][1].size]
    if not seeds:
        return None, 0
    if len(seeds) == 1:
        return first.seeds[seeds[0]][1] - second.seeds[seeds[0]][1], 1
    stacked = np.stack([first.seeds[seed][1] - second.seeds[seed][1] for seed in seeds])
    return nan_mean_rows(stacked), len(seeds)


def compare(first: RowScores, second: RowScores, test: str = DEFAULT_TEST) -> Comparison:
    """``first`` against ``second``: paired by image when they share a seed with the same images,
    else unpaired (see the module's docstring)."""
    check_test(test)
    differences, seeds = paired_differences(first, second)
    if differences is not None:
        defined = finite(differences)
        if defined.size == 0:
            return Comparison(float("nan"), float("nan"), UNTESTED, (0,), seeds)
        p = wilcoxon_p(defined) if test == "wilcoxon" else bootstrap_p(defined)
        return Comparison(p, float(defined.mean()), PAIRED, (int(defined.size),), seeds)
    a, b = first.pooled(), second.pooled()
    if a.size == 0 or b.size == 0:
        return Comparison(float("nan"), float("nan"), UNTESTED, (int(a.size), int(b.size)))
    p = rank_sum_p(a, b) if test == "wilcoxon" else bootstrap_unpaired_p(a, b)
    return Comparison(p, float(a.mean() - b.mean()), UNPAIRED, (int(a.size), int(b.size)))


def describe(comparison: Comparison) -> str:
    """How a comparison was made, for the tables: ``paired (40 images)``, ``paired (40 images,
    3 seeds)``, ``unpaired (40 and 38 images)`` or ``untested (no image scored by both)``."""
    if comparison.pairing == PAIRED:
        seeds = f", {comparison.seeds} seeds" if comparison.seeds > 1 else ""
        return f"paired ({comparison.images[0]} images{seeds})"
    if comparison.pairing == UNPAIRED:
        return f"unpaired ({comparison.images[0]} and {comparison.images[1]} images)"
    return "untested (no image scored by both)" if len(comparison.images) == 1 else "untested (no scores)"


# --- a column's standings --------------------------------------------------------------------
@dataclass(frozen=True)
class Standing:
    """A row's place in its column: significance rank (NaN: no mean), tied with the best, the
    Holm-adjusted p-value against the best (NaN for the best itself and untested pairs), and how it
    was compared with the best (``best`` for the best; empty without a mean)."""
    sig_rank: float
    tied_best: bool
    p_vs_best: float
    vs_best: str


def column_standings(rows: Dict[Hashable, RowScores], higher_is_better: bool, alpha: float = ALPHA,
                     test: str = DEFAULT_TEST) -> Dict[Hashable, Standing]:
    """Every row's :class:`Standing` in one metric column (the rules are in the module's docstring):
    all pairs of rows with a mean compared by ``test``, Holm's correction over the tested pairs."""
    check_alpha(alpha)
    check_test(test)
    keys = sorted(rows, key=lambda key: str(key) if not isinstance(key, tuple) else tuple(map(str, key)))
    ranked = [key for key in keys if math.isfinite(rows[key].mean)]
    out = {key: Standing(float("nan"), False, float("nan"), "") for key in keys}
    if not ranked:
        return out
    sign = 1.0 if higher_is_better else -1.0
    best = max(ranked, key=lambda key: (sign * rows[key].mean, -ranked.index(key)))
    pairs: List[Tuple[Hashable, Hashable]] = []
    comparisons: List[Comparison] = []
    for i, first in enumerate(ranked):
        for second in ranked[i + 1:]:
            pairs.append((first, second))
            comparisons.append(compare(rows[first], rows[second], test))
    adjusted = holm([c.p for c in comparisons])
    better: Dict[Hashable, set] = {key: set() for key in ranked}  # row -> rows significantly better than it
    against_best: Dict[Hashable, Tuple[float, Comparison]] = {}
    for (first, second), comparison, p in zip(pairs, comparisons, adjusted):
        if p < alpha and comparison.difference != 0.0:
            winner, loser = (first, second) if sign * comparison.difference > 0 else (second, first)
            better[loser].add(winner)
        if best in (first, second):
            against_best[second if first == best else first] = (float(p), comparison)
    for key in ranked:
        if key == best:
            out[key] = Standing(1.0, True, float("nan"), BEST)
            continue
        p, comparison = against_best[key]
        tied = best not in better[key]
        out[key] = Standing(1.0 if tied else float(1 + len(better[key])), tied, p, describe(comparison))
    return out


# --- the digits a value is shown with ------------------------------------------------------
MISSING = "–"


def half_width(low: float, high: float) -> float:
    return (high - low) / 2.0


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (not a bool)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(float(value)))


def interval_places(half: float) -> Optional[int]:
    """Decimal places a half-width supports (negative: tens, hundreds, ...), or None for a
    half-width that is missing, zero or negative.

    The half-width keeps two significant digits when its three leading digits read 100 to 354,
    one when they read 355 to 949, and 950 to 999 round up to 1000 and keep two (the rounding
    convention of the Particle Data Group's Review of Particle Physics): 0.0125 -> 3 places
    (0.013), 0.04 -> 2 (0.04), 1.5 -> 1 (1.5), 0.0097 -> 3 (0.010), 1834 -> -2 (1800)."""
    if not is_number(half) or half <= 0:
        return None
    exponent = math.floor(math.log10(half))
    leading = round(half / 10.0 ** (exponent - 2))  # 100 to 1000
    # 355 to 949 keep one digit; 950 to 1000 round up to the next power of ten, whose two digits
    # end at the same place
    return 1 - exponent if leading <= 354 else -exponent


def rounded(value: float, places: int) -> str:
    """``value`` rounded to ``places`` decimals (negative: to tens, hundreds, ...), never in
    exponent notation, without a minus sign on a zero."""
    if places >= 0:
        text = f"{value:.{places}f}"
    else:
        text = f"{round(value, places):.0f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def plain(value: Any, significant: int = 3) -> str:
    """A value without an interval: ``significant`` significant digits, at least every digit
    before the point (0.98604 -> 0.986, 83.525 -> 83.5, 6130.6 -> 6131), exponent notation below
    1e-4; ``–`` for a missing value."""
    if not is_number(value):
        return MISSING
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-4:
        return f"{value:.{significant - 1}e}"
    return rounded(value, max(0, significant - 1 - math.floor(math.log10(abs(value)))))


def with_interval(mean: Any, half: Any) -> str:
    """``mean ± half-width`` with as many digits as the half-width supports
    (:func:`interval_places`), the mean rounded to the same place: (0.8704, 0.0125) ->
    ``0.870 ± 0.013``, (0.52, 0.04) -> ``0.52 ± 0.04``, (12.34, 1.5) -> ``12.3 ± 1.5``. A
    zero-width interval (every score equal) gives ``plain(mean) ± 0``, a missing one ``plain(mean)``,
    a missing mean ``–``."""
    if not is_number(mean):
        return MISSING
    if not is_number(half) or half < 0:
        return plain(mean)
    places = interval_places(float(half))
    if places is None:
        return f"{plain(mean)} ± 0"
    return f"{rounded(float(mean), places)} ± {rounded(float(half), places)}"


def rank_text(rank: Any) -> str:
    """A rank as an integer (``5``), a mean of ranks with one decimal (``4.5``); ``–`` if missing."""
    if not is_number(rank):
        return MISSING
    return str(int(rank)) if float(rank).is_integer() else f"{float(rank):.1f}"


def mean_rank_text(rank: Any) -> str:
    """A mean rank with one decimal (``5.0``); ``–`` if missing."""
    return f"{float(rank):.1f}" if is_number(rank) else MISSING


def p_text(p: Any) -> str:
    """A p-value with two significant digits (``0.21``, ``0.0031``, ``1.2e-11``, ``1``); ``–`` if missing."""
    return f"{float(p):.2g}" if is_number(p) else MISSING
