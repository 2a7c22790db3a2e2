"""Plain-text tables for the bench scripts: aligned columns, no dependencies.

    print(format_table(["impl", "ns/op"], [["shoal", "123.4"]], title="get"))

The first column is left-aligned (row labels), the others right-aligned
(numbers). Cells are turned into text with ``str``; use the ``ns``, ``ratio``
and ``pct`` helpers for consistent number formats.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "ns", "pct", "ratio"]


def ns(value: float | None) -> str:
    """Nanoseconds per operation, or a dash when not measured."""
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def ratio(value: float | None) -> str:
    """A multiple, like ``2.35x``, or a dash."""
    return "-" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    """A fraction shown as a percentage, like ``41.27%``, or a dash."""
    return "-" if value is None else f"{value * 100:.2f}%"


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object] | None],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    groups: Sequence[tuple[str, int]] = (),
) -> str:
    """Render rows under headers; ``groups`` adds a spanning header line above.

    ``groups`` is a list of (label, number of columns) covering every column,
    e.g. ``[("", 1), ("get-hit", 2), ("set", 2)]``; a row of ``None`` is drawn
    as a separator line.
    """
    text_rows = [None if row is None else [str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        if row is None:
            continue
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, headers have {len(headers)}: {row}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    sep = "  "
    if groups:
        # Widen the last column of a group whose label is wider than its columns.
        start = 0
        for label, span in groups:
            cols = range(start, start + span)
            have = sum(widths[c] for c in cols) + len(sep) * (span - 1)
            if len(label) > have:
                widths[start + span - 1] += len(label) - have
            start += span
        if start != len(headers):
            raise ValueError("groups must cover every column")

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return sep.join(parts).rstrip()

    total = sum(widths) + len(sep) * (len(widths) - 1)
    out: list[str] = []
    if title:
        out.append(title)
    out.append("=" * total)
    if groups:
        parts = []
        start = 0
        for label, span in groups:
            width = sum(widths[start : start + span]) + len(sep) * (span - 1)
            parts.append(label.center(width) if label else " " * width)
            start += span
        out.append(sep.join(parts).rstrip())
    out.append(line(list(headers)))
    out.append("-" * total)
    for row in text_rows:
        out.append("-" * total if row is None else line(row))
    out.append("=" * total)
    out.extend(notes)
    return "\n".join(out)
