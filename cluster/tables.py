"""Text tables, one way: left-aligned columns two spaces apart under a header row, no trailing blanks.

The CLI prints them (:func:`cluster.cli.output.table`); ``show_output=True`` paths of the SDK use them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    text = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in text)
