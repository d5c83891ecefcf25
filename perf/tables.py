"""The one markdown table writer of perf/ and its number formats (perf.report and the CLIs)."""

from __future__ import annotations

from collections.abc import Iterable


def table(header: Iterable[str], rows: Iterable[Iterable], align: str = "") -> list[str]:
    """Markdown table lines; `align` has one letter per column, "r" for right-aligned ("l" or nothing: left)."""
    header = list(header)
    rule = "".join("---:|" if align[i : i + 1] == "r" else "---|" for i in range(len(header)))
    return ["| " + " | ".join(header) + " |", "|" + rule, *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def num(v: float | None, digits: int = 1, unit: str = "") -> str:
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


def times(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def ms(v: float | None) -> str:
    """A duration in ms, in the unit that reads best (µs below 1 ms)."""
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v * 1000:.0f} µs" if v >= 0.01 else f"{v * 1000:.1f} µs"


def rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}/s"
