"""Figures beside the leaderboard: each curve metric's mean curves, a panel per model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from bench.storage import atomic_write_bytes


def curve_figure(results: List[Dict[str, Any]], label: str) -> bytes:
    """PNG of the mean curves of metric ``label``: one panel per model (a grid, so a zoo of any
    size stays readable), one line per explainer and seed; random dashed, Grad-CAM dotted."""
    import io
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r["label"] == label and r.get("curve")]
    models = sorted({r["model"] for r in chosen}) or ["?"]
    explainers = sorted({r["explainer"] for r in chosen})
    colours = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(explainers)}
    styles = {"random": "--", "gradcam": ":"}
    columns = min(4, len(models))
    rows = math.ceil(len(models) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.1 * columns + 0.4, 2.5 * rows + 0.9),
                                sharex=True, sharey=True, squeeze=False)
    for axes, model in zip(grid.flat, models):
        for result in sorted((r for r in chosen if r["model"] == model), key=lambda r: (r["explainer"], r["seed"])):
            axes.plot([100 * x for x in result["curve_x"]], result["curve"], marker=".", markersize=3,
                      linestyle=styles.get(result["explainer"], "-"), color=colours[result["explainer"]],
                      label=result["explainer"])
        axes.set_title(model, fontsize=9)
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
    for axes in grid.flat[len(models):]:
        axes.set_visible(False)
    for axes in grid[-1]:
        axes.set_xlabel("pixels removed (%)", fontsize=8)
    for axes in grid[:, 0]:
        axes.set_ylabel("top-1 accuracy", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[e], linestyle=styles.get(e, "-"), marker=".") for e in explainers]
    direction = "higher is better" if chosen and chosen[0]["higher_is_better"] else "lower is better"
    figure.suptitle(f"{label} on {chosen[0]['data'] if chosen else '?'} ({direction})", fontsize=11)
    figure.legend(handles, explainers, loc="upper right", ncol=len(explainers), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.55 / figure.get_figheight()))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_curve_figures(results: List[Dict[str, Any]], folder: Path) -> Dict[str, Path]:
    """``<label>_curves.png`` for every metric in ``results`` that records a curve."""
    labels = sorted({r["label"] for r in results if r.get("curve")})
    safe = lambda text: "".join(c if c.isalnum() or c in "-_" else "_" for c in text)  # noqa: E731
    return {label: atomic_write_bytes(Path(folder) / f"{safe(label)}_curves.png", curve_figure(results, label))
            for label in labels}
