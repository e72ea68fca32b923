"""Plots for the admin pages, drawn server-side with matplotlib as SVG data URLs (shown in
an <img>, so nothing in them runs in the page)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence


def _figure(width: float = 6.0, height: float = 3.0):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(width, height), dpi=100)


def _data_url(figure) -> str:  # type: ignore[no-untyped-def]
    from matplotlib import pyplot

    buffer = io.BytesIO()
    # A fixed hash salt and no date: the same data draws the same bytes.
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    pyplot.close(figure)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def lines(
    title: str, x: Sequence[int], series: Mapping[str, Sequence[float | None]], *, xlabel: str = "round"
) -> str | None:
    """One line per series over x (None: no point); None when there is nothing to draw."""
    if not x or not any(v is not None for values in series.values() for v in values):
        return None
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "factloop"
    figure, axes = _figure()
    for name, values in series.items():
        points = [(a, b) for a, b in zip(x, values, strict=True) if b is not None]
        if points:
            axes.plot([a for a, _ in points], [b for _, b in points], marker="o", label=name)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_xticks(list(x))
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _data_url(figure)


def bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]]) -> str | None:
    """Grouped bars per label (None: no bar); None when there is nothing to draw."""
    if not labels or not any(v is not None for values in series.values() for v in values):
        return None
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "factloop"
    figure, axes = _figure(max(6.0, 0.6 * len(labels)), 3.0)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        axes.bar(xs, [v for v in values if v is not None], width=width, label=name)
    axes.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))])
    axes.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
    axes.set_title(title)
    axes.set_ylim(0, 1.05)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _data_url(figure)
