"""The highway evaluation's figure: how every method's episodes end, at a glance.

One horizontal bar per method, split into the shares of its episodes that succeed,
collide with a car ahead, behind or at the side, leave the road, or run out of time; a
whisker marks the 95% Wilson interval of the success rate (over the pooled episodes of
every policy seed). Saved as ``figures/evaluation.png`` beside ``evaluation.md``.
"""

from __future__ import annotations

from typing import Any

# (row key, label, colour): the order in which the parts of a bar are stacked
OUTCOMES = (("success_rate", "success", "#2e7d32"),
            ("collision_front", "hit ahead", "#c62828"),
            ("collision_rear", "hit from behind", "#ef6c00"),
            ("collision_side", "hit at the side", "#f9a825"),
            ("offroad_rate", "off the road", "#6a1b9a"),
            ("timeout_rate", "out of time", "#9e9e9e"))


def evaluation_figure(results: dict[str, dict[str, Any]], title: str = ""):
    """A matplotlib figure of ``results`` (``{method: evaluation row}``, rows as
    ``experiments/highway_eval.py`` ``summarise`` / ``over_seeds`` make them)."""
    if not results:
        raise ValueError("no evaluation rows to draw")
    import matplotlib  # plotting is optional at import time: only stages that draw need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(methods) + 1.6))
    ys = range(len(methods))[::-1]  # the first method on top
    left = [0.0] * len(methods)
    for key, label, colour in OUTCOMES:
        share = [100.0 * float(results[m].get(key) or 0.0) for m in methods]
        ax.barh(list(ys), share, left=left, color=colour, label=label, height=0.7)
        left = [a + b for a, b in zip(left, share, strict=True)]
    for y, m in zip(ys, methods, strict=True):
        lo, hi = (100.0 * v for v in results[m]["success_ci95"])
        ax.plot([lo, hi], [y, y], color="black", lw=1.5)
        ax.text(101.0, y, f"{100.0 * results[m]['success_rate']:.1f}%", va="center",
                fontsize=8)
    ax.set_yticks(list(ys), methods)
    ax.set_ylabel("method")
    ax.set_xlim(0.0, 110.0)
    ax.set_xlabel("share of episodes (%); black: 95% interval of the success rate")
    ax.set_title(title or "How the episodes end", pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(OUTCOMES), fontsize=7,
              frameon=False, handlelength=1.0, columnspacing=1.0)
    return fig
