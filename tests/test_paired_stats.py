"""Paired comparisons between leaderboard rows: the Wilcoxon signed-rank p-values (known answers,
scipy), the paired bootstrap, Holm's correction (known answers, the step-down procedure), and the
leaderboard built from cell results: clear differences, rows equal but for noise, one row, NaN
per-image scores, several seeds, rows compared unpaired, the pivot's columns and their CSV round trip."""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from interpbench.core import CellResult
from interpbench.report.html import render_html
from interpbench.report.markdown import to_markdown
from interpbench.report.stats import (
    RESAMPLES,
    RowScores,
    bootstrap_p,
    bootstrap_unpaired_p,
    column_standings,
    compare,
    holm,
    rank_sum_p,
    wilcoxon_p,
)
from interpbench.report.tables import directions, pivot, summary_table, tidy_table


def cell(model, explainer, per_image, label="m", seed=0, higher=True, num_images=None, eval_seed=0):
    per_image = [None if v is None or v != v else float(v) for v in per_image]
    values = np.array([np.nan if v is None else v for v in per_image])
    score = float(np.nanmean(values)) if np.isfinite(values).any() else None
    data = {"name": "synthetic", "num_test": 100}
    return CellResult(
        cell={"train": {"model": model, "data": data, "seed": seed}, "explainer": explainer, "explainer_args": {},
              "metric": label, "metric_args": {}, "num_images": num_images or len(per_image), "target": "predicted",
              "eval_seed": eval_seed},
        key=f"{model}-{explainer}-{label}-{seed}-{eval_seed}", model=model, explainer=explainer,
        explainer_label=explainer, metric=label, label=label, higher_is_better=higher, flag=None, data="synthetic",
        seed=seed, size="cpu", score=score, per_image=per_image, curve_x=None, curve=None,
        num_images=len(per_image), test_accuracy=0.9, model_key=f"{model}-{seed}", seconds=1.0, git_commit="abc",
        torch="2")


def board(results, **kwargs):
    tidy = tidy_table(results)
    summary = summary_table(tidy, **kwargs)
    return tidy, summary, pivot(tidy, summary=summary)


def hand_signed_rank(d):
    """Two-sided exact signed-rank p-value by listing every sign flip of the midranks of |d|."""
    d = np.asarray([v for v in d if v != 0], dtype=float)
    ranks = scipy.stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    signs = (np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1  # every subset of positive signs
    sums = signs @ ranks
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


# --- Holm --------------------------------------------------------------------------------------
def test_holm_known_answers():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-15)
    # sorted 0.005, 0.011, 0.02, 0.04, 0.13 times 5, 4, 3, 2, 1: 0.025, 0.044, 0.06, 0.08, 0.13
    assert holm([0.13, 0.02, 0.005, 0.04, 0.011]) == pytest.approx([0.13, 0.06, 0.025, 0.08, 0.044], abs=1e-15)
    # step-down monotone: 0.02 * 2 = 0.04 < 0.015 * 3 = 0.045, so the larger p takes 0.045
    assert holm([0.015, 0.02, 0.9]) == pytest.approx([0.045, 0.045, 0.9], abs=1e-15)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    adjusted = holm([0.02, float("nan"), 0.01])  # an untested pair is not counted: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([]).size == 0
    with pytest.raises(ValueError, match=r"^p-values must lie in \[0, 1\], got 0.1 to 1.5$"):
        holm([0.1, 1.5])


def step_down_rejections(p, alpha):
    """Holm's procedure as published: reject the smallest p-values while p_(i) <= alpha / (m - i + 1)."""
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(len(p), dtype=bool)
    for i, index in enumerate(order):
        if p[index] > alpha / (len(p) - i):
            break
        rejected[index] = True
    return rejected


def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(11)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = np.where(rng.uniform(size=m) < 0.5, rng.uniform(0, 0.02, m), rng.uniform(0, 1, m))
        adjusted = holm(p)
        assert np.all(adjusted >= p - 1e-15) and np.all(adjusted <= 1.0)
        for alpha in (0.001, 0.01, 0.05, 0.1, 0.2):
            assert np.array_equal(adjusted <= alpha, step_down_rejections(p, alpha)), (p, alpha)


# --- Wilcoxon, Mann-Whitney, bootstrap -------------------------------------------------------------
def test_wilcoxon_known_answers():
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # every sign positive: 2 * 1/2^5
    assert wilcoxon_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # W- = 2 (the rank of -2); rank sums <= 2 of {1..5}: {}, {1}, {2}: p = 2 * 3/32
    assert wilcoxon_p([1, -2, 3, 4, 5]) == pytest.approx(6 / 32)
    # ties: midranks 1.5, 1.5, 3, 4; W+ = 6 of 10; P(W+ >= 6) = 6/16, so p = 0.75
    assert wilcoxon_p([1, 1, 2, -3]) == pytest.approx(0.75)
    assert wilcoxon_p([0, 0, 1, 2, 3, 4, 5]) == wilcoxon_p([1, 2, 3, 4, 5])  # zeros dropped (zero_method wilcox)
    assert wilcoxon_p([None, float("nan"), 1, 2, 3, 4, 5]) == wilcoxon_p([1, 2, 3, 4, 5])  # undefined dropped
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # identical on every image
    assert wilcoxon_p([3.0]) == 1.0
    assert math.isnan(wilcoxon_p([None, float("nan")]))  # nothing to compare
    # Float roundoff is no difference: 0.1 + 0.2 - 0.3 is 5.6e-17, rounded to 0 (scipy alone: p = 0.0625).
    roundoff = np.full(5, 0.1) + np.full(5, 0.2) - np.full(5, 0.3)
    assert np.all(roundoff != 0) and scipy.stats.wilcoxon(roundoff).pvalue == pytest.approx(0.0625)
    assert wilcoxon_p(roundoff) == 1.0


def test_wilcoxon_agrees_with_scipy_and_the_sign_flip_enumeration():
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 20, 50):  # no ties: scipy's exact distribution
        d = rng.normal(0.2, 1.0, n)
        assert wilcoxon_p(d) == pytest.approx(scipy.stats.wilcoxon(d, method="exact").pvalue, rel=1e-12, abs=1e-15)
    for n in (70, 80, 500):  # above 50 non-zero: scipy's normal approximation, tie-corrected, no continuity correction
        d = np.round(rng.normal(0.1, 1.0, n), 1)  # many ties, some zeros
        nonzero = d[d != 0]
        assert nonzero.size > 50 and nonzero.size < n
        expected = scipy.stats.wilcoxon(nonzero, method="asymptotic", correction=False).pvalue
        assert wilcoxon_p(d) == pytest.approx(expected, rel=1e-10)
        assert wilcoxon_p(d) == pytest.approx(
            scipy.stats.wilcoxon(d, zero_method="wilcox", method="asymptotic", correction=False).pvalue, rel=1e-10)
    for n in (6, 10, 12):  # ties, up to 50: the exact conditional distribution
        d = rng.integers(-3, 5, n).astype(float)
        nonzero = d[d != 0]
        exhaustive = scipy.stats.PermutationMethod(n_resamples=2 ** nonzero.size)
        assert wilcoxon_p(d) == pytest.approx(scipy.stats.wilcoxon(nonzero, method=exhaustive).pvalue, rel=1e-12)
        assert wilcoxon_p(d) == pytest.approx(hand_signed_rank(d), rel=1e-12)
    d = np.repeat([1.0, -1.0, 2.0, -3.0], [9, 3, 3, 2])  # 17 tied differences: past scipy's permutation range
    assert wilcoxon_p(d) == pytest.approx(hand_signed_rank(d), rel=1e-12)


def test_zero_one_scores_give_mcnemars_test():
    # 0/1 scores: the ties and zeros leave the sign test on the discordant images (9 up, 3 down)
    first = np.array([1] * 9 + [0] * 3 + [1] * 5 + [0] * 4, dtype=float)
    second = np.array([0] * 9 + [1] * 3 + [1] * 5 + [0] * 4, dtype=float)
    assert wilcoxon_p(first - second) == pytest.approx(scipy.stats.binomtest(9, 12, 0.5).pvalue, rel=1e-12)
    # 70 discordant images (45 up): McNemar's normal approximation, z = (45 - 25) / sqrt(70), no correction
    d = np.array([1.0] * 45 + [-1.0] * 25 + [0.0] * 30)
    assert wilcoxon_p(d) == pytest.approx(2 * scipy.stats.norm.sf(20 / math.sqrt(70)), rel=1e-12)


def test_rank_sum_agrees_with_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 6), rng.normal(1, 1, 7)  # no ties, a sample <= 8: exact
    assert rank_sum_p(a, b) == pytest.approx(scipy.stats.mannwhitneyu(a, b, method="exact").pvalue, rel=1e-12)
    a, b = np.round(rng.normal(0, 1, 30), 1), np.round(rng.normal(0.5, 1, 40), 1)  # ties: normal approximation
    assert rank_sum_p(list(a) + [None], b) == pytest.approx(
        scipy.stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=True).pvalue, rel=1e-12)
    assert rank_sum_p([0.5, 0.5], [0.5]) == 1.0 and math.isnan(rank_sum_p([], [1.0]))


def test_bootstrap_p_known_cases():
    assert bootstrap_p([0.2] * 10) == pytest.approx(1 / (RESAMPLES + 1))  # every resample has the mean 0.2
    assert bootstrap_p([0.0, 0.0]) == 1.0 and bootstrap_p([-1.0, 1.0]) == 1.0  # mean 0: every resample as far
    assert math.isnan(bootstrap_p([None]))
    d = np.array([0.3, -0.1, 0.25, 0.4, 0.05, -0.2, 0.5, 0.15])
    draws = np.random.default_rng(0).integers(0, d.size, size=(RESAMPLES, d.size))
    extreme = sum(abs(sum(d[j] for j in row) / d.size - d.mean()) >= abs(d.mean()) for row in draws)
    assert bootstrap_p(d) == pytest.approx((1 + extreme) / (RESAMPLES + 1), abs=1e-12)
    rng = np.random.default_rng(0)
    a, b = np.array([0.9, 0.8, 0.85]), np.array([0.1, 0.2])
    means = (a[rng.integers(0, 3, (RESAMPLES, 3))].mean(axis=1) - b[rng.integers(0, 2, (RESAMPLES, 2))].mean(axis=1))
    expected = (1 + np.count_nonzero(np.abs(means - 0.7) >= 0.7)) / (RESAMPLES + 1)
    assert bootstrap_unpaired_p(a, b) == pytest.approx(expected) and expected == pytest.approx(1 / (RESAMPLES + 1))
    with pytest.raises(ValueError, match="^resamples must be a positive integer, got 0$"):
        bootstrap_p(d, resamples=0)


def test_compare_pairs_by_image_and_seed_or_says_unpaired():
    base = np.linspace(0.1, 0.9, 9)
    first = RowScores(0.6, {0: ("images", base + 0.1), 1: ("images", base + 0.3)})
    second = RowScores(0.4, {0: ("images", base), 1: ("images", base.copy()), 2: ("images", base)})
    paired = compare(first, second)
    assert (paired.pairing, paired.images, paired.seeds) == ("paired", (9,), 2)
    assert paired.difference == pytest.approx(0.2)  # per image: mean of 0.1 (seed 0) and 0.3 (seed 1)
    assert paired.p == pytest.approx(2 / 2 ** 9)
    other_images = RowScores(0.4, {0: ("other", base), 1: ("other", base)})
    unpaired = compare(first, other_images)
    assert (unpaired.pairing, unpaired.images) == ("unpaired", (9, 9))
    assert unpaired.p == pytest.approx(rank_sum_p(base + 0.2, base))  # each row averaged over its seeds
    nothing = compare(RowScores(0.5, {0: ("images", np.array([np.nan, 1.0]))}),
                      RowScores(0.5, {0: ("images", np.array([1.0, np.nan]))}))
    assert nothing.pairing == "untested" and math.isnan(nothing.p)
    with pytest.raises(ValueError, match="^unknown test 't'; valid tests: wilcoxon, bootstrap$"):
        compare(first, second, test="t")
    with pytest.raises(ValueError, match=r"^alpha must be between 0 and 1 \(e.g. 0.05\), got 5$"):
        column_standings({"a": first}, True, alpha=5)


def test_a_row_the_tests_do_not_separate_from_the_best_ranks_first_even_if_another_row_beats_it():
    a = np.full(30, 0.5)
    rows = {"a": RowScores(0.5, {0: ("images", a)}),
            "b": RowScores(0.633, {0: ("images", a + np.array([1.0] * 10 + [-0.3] * 20))}),  # noisy, best mean
            "c": RowScores(0.51, {0: ("images", a + 0.01)})}  # above a on every image
    standings = column_standings(rows, higher_is_better=True)
    # c over a: 30 equal positive differences, p = 2 / 2^30, times 3; b over a: W+ = 255 of 465, far from 0.05
    assert compare(rows["c"], rows["a"]).p == pytest.approx(2 / 2 ** 30)
    assert compare(rows["b"], rows["a"]).p > 0.5
    assert standings["b"].vs_best == "best"
    assert standings["a"].tied_best and standings["a"].sig_rank == 1  # pinned to the best's tie
    assert standings["c"].tied_best and standings["c"].sig_rank == 1
    rows["b"] = RowScores(0.6, {0: ("images", a + 0.1)})  # now b beats both on every image
    standings = column_standings(rows, higher_is_better=True)
    assert (standings["c"].sig_rank, standings["a"].sig_rank) == (2, 3)  # 1 + the rows significantly better


# --- leaderboards from cell results ----------------------------------------------------------------
def four_rows(label="m", higher=True):
    """a/native best; a/gradcam the same but for small noise, +-0.001 k on image k (+ for odd k), so
    that the differences have distinct sizes and alternating signs (W+ = 400, W- = 420); b/native
    clearly worse (by about 0.3 on every image); b/gradcam as b/native but for the same noise."""
    rng = np.random.default_rng(3)
    good = rng.uniform(0.6, 0.9, 40)
    k = np.arange(1, 41)
    noise = 0.001 * k * np.where(k % 2 == 1, 1.0, -1.0)
    worse = good - 0.3 + rng.uniform(-0.02, 0.02, 40)
    sign = 1.0 if higher else -1.0
    return [cell("a", "native", sign * good, label, higher=higher),
            cell("a", "gradcam", sign * (good + noise), label, higher=higher),
            cell("b", "native", sign * worse, label, higher=higher),
            cell("b", "gradcam", sign * (worse - noise), label, higher=higher)]


@pytest.mark.parametrize("higher", [True, False])
def test_clearly_different_rows_are_not_tied_and_noise_is(higher):
    tidy, summary, table = board(four_rows(higher=higher))
    rows = table.set_index(["model", "explainer"])
    assert rows["m_tied_best"].to_dict() == {("a", "gradcam"): True, ("a", "native"): True,
                                             ("b", "gradcam"): False, ("b", "native"): False}
    assert rows["m_sig_rank"].to_dict() == {("a", "gradcam"): 1, ("a", "native"): 1, ("b", "gradcam"): 3,
                                            ("b", "native"): 3}
    assert rows["m_rank"].to_dict() == {("a", "gradcam"): 2, ("a", "native"): 1, ("b", "gradcam"): 3,
                                        ("b", "native"): 4}  # the rank by mean is kept
    # Six pairs. a vs b (four pairs): 40 differences of one sign, distinct: exact p = 2 / 2^40, Holm
    # multiplies the four equal smallest by 6, 5, 4, 3 and the step-down maximum gives 6 * 2 / 2^40 to
    # each. The two noise pairs: W+ = 400 of 820, scipy's exact p (> 0.5), times 2 then 1: Holm gives 1.
    noise_p = scipy.stats.wilcoxon(0.001 * np.arange(1, 41) * np.tile([1, -1], 20), method="exact").pvalue
    assert noise_p > 0.5
    worse = rows.loc[[("b", "gradcam"), ("b", "native")], "m_p_vs_best"]
    assert worse.tolist() == pytest.approx([6 * 2 / 2 ** 40] * 2, rel=1e-12)
    assert rows.loc[("a", "gradcam"), "m_p_vs_best"] == 1.0
    assert math.isnan(rows.loc[("a", "native"), "m_p_vs_best"])  # the best is not tested against itself
    assert set(summary["vs_best"]) == {"best", "paired (40 images)"}
    assert rows["mean_sig_rank"].tolist() == rows["m_sig_rank"].tolist()
    assert rows["mean_rank"].tolist() == rows["m_rank"].tolist()

    markdown = to_markdown(table, directions(tidy), "t", summary)
    shown = markdown_cells(markdown)
    # Rows by significance rank, ties by the mean in the metric's direction (b/gradcam's noise
    # sums to +0.02 in its favour); one metric: no mean-rank column; three decimals, as the
    # intervals' half-widths (0.025 to 0.028) have two significant digits.
    minus = "" if higher else "-"
    assert list(shown) == [("a", "native"), ("a", "gradcam"), ("b", "gradcam"), ("b", "native")]
    assert f"| model | explainer | accuracy ↑ | m {'↑' if higher else '↓'} |" in markdown.splitlines()
    assert [cells[2:] for cells in shown.values()] == [
        ["**0.900**", f"**{minus}0.744** ± 0.026 (1)"], ["**0.900**", f"**{minus}0.743** ± 0.025 (1)"],
        ["**0.900**", f"{minus}0.446 ± 0.028 (3)"], ["**0.900**", f"{minus}0.446 ± 0.027 (3)"]]
    assert (f"- **m {'↑' if higher else '↓'}**: best **a × native**, {minus}0.744 ± 0.026, tied with a × gradcam "
            f"({minus}0.743 ± 0.025; p = 1). Accuracy cost: none (a is the most accurate model, 0.900).") in markdown
    assert "Holm's correction over all pairs of rows of the column, α = 0.05" in markdown
    assert 'zero differences dropped, `zero_method="wilcox"`' in markdown
    assert "(n): significance rank in the column: 1 for the best mean and every row tied with it (bold), " \
           "otherwise 1 + the number of rows significantly better than this one" in markdown
    page = render_html(Path("."), "synthetic", table, summary, tidy, {}, [], [])
    marked = re.findall(r'<td class="num (best|tied)" data-column="m" data-value="([^"]*)">', page)
    assert sorted(marked) == [("best", repr(float(rows.loc[("a", "native"), "m"]))),
                              ("tied", repr(float(rows.loc[("a", "gradcam"), "m"])))]
    assert "rows tied with it in bold" in page and "Holm&#x27;s correction over all pairs" in page


def markdown_cells(markdown):
    """(model, explainer) -> the cells of its markdown row, stripped."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in markdown.splitlines() if line.startswith("| ")]
    return {(r[0], r[1]): r for r in rows[1:]}


def test_bootstrap_test_separates_the_clear_case_too():
    _, summary, table = board(four_rows(), test="bootstrap")
    rows = table.set_index(["model", "explainer"])
    assert rows["m_tied_best"].tolist() == [True, True, False, False]
    # differences between 0.26 and 0.34: no resample's mean lies 0.3 from theirs, p = 1/1001, times 6
    assert rows.loc[("b", "native"), "m_p_vs_best"] == pytest.approx(6 / (RESAMPLES + 1))
    assert "paired bootstrap test of the mean per-image difference" in to_markdown(
        table, {"m": True}, "t", summary)


def test_a_column_of_one_row_ranks_it_first_and_tied():
    _, summary, table = board([cell("a", "native", [0.2, 0.4, 0.3])])
    row = table.iloc[0]
    assert (row["m_rank"], row["m_sig_rank"], bool(row["m_tied_best"])) == (1, 1, True)
    assert math.isnan(row["m_p_vs_best"]) and summary["vs_best"].tolist() == ["best"]
    markdown = to_markdown(table, {"m": True}, "t", summary)
    assert markdown_cells(markdown)[("a", "native")] == ["a", "native", "**0.900**", "**0.30** ± 0.10 (1)"]
    assert "best **a × native**, 0.30 ± 0.10, the only row with a score." in markdown


def test_undefined_per_image_scores_are_dropped_pair_by_pair():
    rng = np.random.default_rng(8)
    good = np.linspace(0.5, 0.9, 30)  # ascending: a (images 5-29) has a higher mean than c (images 0-24)
    a = good.copy()
    a[:5] = np.nan
    b = good - rng.uniform(0.01, 0.2, 30)
    b[5:10] = np.nan
    c = good - 0.01 + rng.normal(0, 0.05, 30)
    c[25:] = np.nan
    results = [cell("a", "native", a), cell("b", "native", b), cell("c", "native", c)]
    _, summary, table = board(results)
    rows = summary.set_index("model")
    best = rows["mean"].idxmax()
    assert best == "a" and rows.loc["a", "vs_best"] == "best"
    assert rows.loc["b", "vs_best"] == "paired (20 images)"  # 30 less 5 undefined in a, less 5 in b
    assert rows.loc["c", "vs_best"] == "paired (20 images)"  # 30 less 5 in a, less 5 in c
    raw = {"ab": wilcoxon_p((a - b)[10:]), "ac": wilcoxon_p((a - c)[5:25]),
           "bc": wilcoxon_p(np.concatenate([(b - c)[:5], (b - c)[10:25]]))}
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    assert rows.loc["b", "p_vs_best"] == pytest.approx(adjusted["ab"], rel=1e-12)
    assert rows.loc["c", "p_vs_best"] == pytest.approx(adjusted["ac"], rel=1e-12)
    assert adjusted["ab"] < 0.05 and adjusted["ac"] >= 0.05  # b below a on each of its 20 images; c noisy
    assert table.set_index("model")["m_tied_best"].to_dict() == {"a": True, "b": False, "c": True}


def test_several_seeds_pair_within_each_seed_and_rows_without_a_common_seed_go_unpaired():
    rng = np.random.default_rng(4)
    base = {seed: rng.uniform(0.4, 0.8, 12) for seed in (0, 1)}
    results = [cell("a", "native", base[s] + 0.1, seed=s) for s in (0, 1)]
    results += [cell("b", "native", base[s] + rng.normal(0, 0.05, 12), seed=s) for s in (0, 1)]
    results += [cell("c", "native", rng.uniform(0.0, 0.2, 12), seed=2)]  # a seed no other row has
    tidy, summary, table = board(results)
    rows = summary.set_index("model")
    assert rows.loc["a", "vs_best"] == "best"
    assert rows.loc["b", "vs_best"] == "paired (12 images, 2 seeds)"
    assert rows.loc["c", "vs_best"] == "unpaired (12 and 12 images)"
    b = [r for r in results if r.model == "b"]
    differences = np.mean([base[s] + 0.1 - np.array(b[s].per_image) for s in (0, 1)], axis=0)
    a_mean = np.mean([base[s] + 0.1 for s in (0, 1)], axis=0)
    c_scores = results[-1].per_image
    raw = [wilcoxon_p(differences), rank_sum_p(a_mean, c_scores),
           rank_sum_p(np.mean([b[s].per_image for s in (0, 1)], axis=0), c_scores)]
    adjusted = holm(raw)
    assert rows.loc["b", "p_vs_best"] == pytest.approx(adjusted[0], rel=1e-12)
    assert rows.loc["c", "p_vs_best"] == pytest.approx(adjusted[1], rel=1e-12)
    markdown = to_markdown(table, directions(tidy), "t", summary)
    assert ("Compared with the best unpaired (Mann-Whitney U test: no seed with the same images in common): "
            "c/native (m).") in markdown


def test_cells_that_scored_other_images_are_not_paired():
    results = [cell("a", "native", [0.9, 0.8, 0.7, 0.95, 0.85, 0.75]),
               cell("b", "native", [0.1, 0.2, 0.3, 0.15, 0.25, 0.05], eval_seed=1)]
    summary = summary_table(tidy_table(results))
    assert summary.set_index("model").loc["b", "vs_best"] == "unpaired (6 and 6 images)"
    # no ties, 6 and 6: exact Mann-Whitney, every a above every b: p = 2 / C(12, 6)
    assert summary.set_index("model").loc["b", "p_vs_best"] == pytest.approx(2 / math.comb(12, 6))


def test_a_tidy_table_without_per_image_scores_shows_the_ranks_by_mean():
    tidy = tidy_table(four_rows())
    bare = pd.DataFrame(tidy)  # a copy keeps attrs; a table read back from a CSV has none
    bare.attrs = {}
    summary = summary_table(bare)
    assert summary["sig_rank"].isna().all() and not summary["tied_best"].any()
    table = pivot(bare, summary=summary)
    markdown = to_markdown(table, {"m": True}, "t", summary)
    assert "(n): rank in the column, 1 = best in the metric's direction" in markdown and "Bold:" not in markdown
    shown = markdown_cells(markdown)
    assert [key for key, cells in shown.items() if cells[3].startswith("**")] == [("a", "native")]
    assert shown[("a", "gradcam")][3].endswith(" (2)")  # the rank by mean


def test_pivot_columns_mean_ranks_and_csv_round_trip():
    results = four_rows() + four_rows("n", higher=False)
    tidy, _, table = board(results)
    per_metric = ["", "_ci_low", "_ci_high", "_rank", "_sig_rank", "_tied_best", "_p_vs_best"]
    assert table.columns.tolist() == (
        ["model", "explainer", "seeds", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]
        + [f"m{s}" for s in per_metric] + [f"n{s}" for s in per_metric] + ["mean_rank", "mean_sig_rank", "interval"])
    assert table["m_tied_best"].dtype == bool and table.attrs == {}
    assert np.allclose(table["mean_sig_rank"], table[["m_sig_rank", "n_sig_rank"]].mean(axis=1))
    chosen = pivot(tidy, rank_metrics=["n"])
    assert np.allclose(chosen["mean_sig_rank"], chosen["n_sig_rank"])
    assert np.allclose(chosen["mean_rank"], chosen["n_rank"])
    written = pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False)))
    assert written["m_tied_best"].dtype == bool
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
