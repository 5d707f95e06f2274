"""Fixed-width text tables, for placement descriptions and benchmarks."""

from __future__ import annotations


def format_table(rows: list[tuple], header: tuple, *, align: str = "right") -> str:
    """Formats rows under a header, with a dashed rule; floats get 3 decimals.

    Example:
        >>> print(format_table([(1, 2.5)], ("M", "ms")))
        M     ms
        -  -----
        1  2.500
    """
    cells = [tuple(str(c) for c in header)] + [tuple(_fmt(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    pad = str.rjust if align == "right" else str.ljust
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
