"""A small hand-written SVG chart for ``python -m tasker bench --plot``: no plotting library.

:func:`svg` draws panels side by side, each a log-x line chart of a few series with
their points marked and labelled. Enough for the scale figures; nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import attrs

__all__ = ["Panel", "Series", "svg"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
_W, _H = 360, 260  # one panel
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 36, 44


@attrs.frozen
class Series:
    """One line: ``points`` are (x, y), x > 0."""

    name: str
    points: tuple[tuple[float, float], ...]


@attrs.frozen
class Panel:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exponent
        if top >= value:
            return float(top)
    return float(10 ** (exponent + 1))  # pragma: no cover


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _panel(panel: Panel, x0: float) -> list[str]:
    xs = [x for s in panel.series for x, _ in s.points]
    ys = [y for s in panel.series for _, y in s.points]
    out = [f'<text x="{x0 + _W / 2:.0f}" y="20" text-anchor="middle" font-weight="bold">{escape(panel.title)}</text>']
    if not xs:
        return out
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    top = _nice_max(max(ys))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return x0 + _LEFT + (math.log10(x) - lo) / (hi - lo) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - y / top * plot_h

    out.append(f'<rect x="{x0 + _LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for k in range(5):
        y = top * k / 4
        out.append(
            f'<line x1="{x0 + _LEFT}" x2="{x0 + _LEFT + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
            f'<text x="{x0 + _LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="10">{y:g}</text>'
        )
    for x in sorted(set(xs)):
        out.append(
            f'<text x="{px(x):.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle" font-size="10">{_fmt(x)}</text>'
        )
    out.append(
        f'<text x="{x0 + _LEFT + plot_w / 2:.0f}" y="{_H - 8}" text-anchor="middle" font-size="11">'
        f"{escape(panel.x_label)}</text>"
        f'<text x="{x0 + 14}" y="{_TOP + plot_h / 2:.0f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 {x0 + 14} {_TOP + plot_h / 2:.0f})">{escape(panel.y_label)}</text>'
    )
    for n, series in enumerate(panel.series):
        colour = _COLOURS[n % len(_COLOURS)]
        points = sorted(series.points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>'
                f'<text x="{px(x) + 4:.1f}" y="{py(y) - 5:.1f}" font-size="9" fill="{colour}">{y:.3g}</text>'
            )
        out.append(
            f'<rect x="{x0 + _LEFT + 8}" y="{_TOP + 6 + 14 * n}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x0 + _LEFT + 22}" y="{_TOP + 15 + 14 * n}" font-size="10">{escape(series.name)}</text>'
        )
    return out


def svg(panels: Sequence[Panel], caption: str = "") -> str:
    """An SVG document with ``panels`` side by side and ``caption`` under them."""
    width, height = _W * len(panels), _H + (24 if caption else 0)
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for n, panel in enumerate(panels):
        body += _panel(panel, n * _W)
    if caption:
        body.append(f'<text x="8" y="{height - 8}" font-size="11">{escape(caption)}</text>')
    body.append("</svg>")
    return "\n".join(body) + "\n"
