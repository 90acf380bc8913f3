"""Markdown output of the benchmarks: number formats, tables, marked sections of a file, the load meter."""
from __future__ import annotations

import contextlib
import math
import os
import statistics
from pathlib import Path


class LoadMeter:
    """Samples the 1-minute load average during a run."""

    def __init__(self):
        self.samples: list[float] = []
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.samples.append(os.getloadavg()[0])

    def __str__(self) -> str:
        if not self.samples:
            return "load average unavailable"
        return (f"1-min load average {min(self.samples):.1f}–{max(self.samples):.1f} "
                f"({len(self.samples)} samples) on {os.cpu_count()} logical cores")


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def med_range(xs: list[float], digits: int = 2) -> str:
    """'median [min–max]' of a list (just the value for one element)."""
    if not xs:
        return "—"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path, key: str, text: str) -> None:
    """Put `text` between `<!-- bench:key -->` markers in `path`: replaced if present, else appended."""
    path = Path(path)
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.write_text(new)


def emit(text: str, out: str | None, section: str) -> None:
    """Print, and write into section `section` of `out` when given."""
    print(text, flush=True)
    if out:
        write_section(out, section, text)
