"""Figures beside the leaderboard: each curve metric's mean curve per model and explainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from bench.storage import atomic_write_bytes


def curve_figure(results: List[Dict[str, Any]], label: str) -> bytes:
    """PNG of the mean curves of metric ``label``: one colour per model, random dashed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r["label"] == label and r.get("curve")]
    models = sorted({r["model"] for r in chosen})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = {"random": "--", "gradcam": ":"}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for result in sorted(chosen, key=lambda r: (r["model"], r["explainer"], r["seed"])):
        axes.plot([100 * x for x in result["curve_x"]], result["curve"],
                  linestyle=styles.get(result["explainer"], "-"), color=colours[result["model"]],
                  marker=".", label=f"{result['model']} / {result['explainer']} (seed {result['seed']})")
    direction = "higher is better" if chosen and chosen[0]["higher_is_better"] else "lower is better"
    axes.set_xlabel("pixels removed (%)")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title(f"{label} on {chosen[0]['data'] if chosen else '?'} ({direction})")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_curve_figures(results: List[Dict[str, Any]], folder: Path) -> Dict[str, Path]:
    """``<label>_curves.png`` for every metric in ``results`` that records a curve."""
    labels = sorted({r["label"] for r in results if r.get("curve")})
    safe = lambda text: "".join(c if c.isalnum() or c in "-_" else "_" for c in text)  # noqa: E731
    return {label: atomic_write_bytes(Path(folder) / f"{safe(label)}_curves.png", curve_figure(results, label))
            for label in labels}
