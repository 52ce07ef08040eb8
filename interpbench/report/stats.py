"""Bootstrap intervals of a mean, ranks in a metric's direction, and the digits a value is shown with."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import numpy as np
import pandas as pd

RESAMPLES = 1000


LEVEL = 0.95


BOOTSTRAP_SEED = 0


# --- intervals and ranks -------------------------------------------------------------------
def bootstrap_interval(values: Iterable[Optional[float]], resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``None``/NaN dropped).

    ``resamples`` samples of ``n`` indices drawn with replacement by ``numpy.random.default_rng(seed)``
    (one ``integers(0, n, (resamples, n))`` draw), the mean of each, then the ``(1 - level) / 2``
    and ``(1 + level) / 2`` percentiles (numpy's linear interpolation). One value gives a zero
    width interval; none gives ``(nan, nan)``.
    """
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    data = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    data = data[~np.isnan(data)]
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


# --- markdown ------------------------------------------------------------------------------
def decimals(values: Iterable[float]) -> int:
    """Decimal places for a column: 4 below 10, then one fewer per digit before the point (>= 1)."""
    finite = [abs(v) for v in values if v is not None and v == v and math.isfinite(v)]
    if not finite or max(finite) < 10:
        return 4
    digits = int(math.floor(math.log10(max(finite)))) + 1
    return max(1, 5 - digits)


def half_width(low: float, high: float) -> float:
    return (high - low) / 2.0
