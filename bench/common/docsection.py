"""Rewriting one generated section of a markdown file (docs/benchmarks.md), and nothing else.

Each benchmark owns the text between its `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers; other benchmarks own other sections of the same
file. The file is read right before it is written, and everything outside the
section is kept byte for byte.
"""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section NAME."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, start: str, end: str, text: str, intro: str) -> None:
    """Put `text` (markers included) where the section from `start` to `end` is, or append it when missing.

    A missing file starts as `intro`. The file always ends with a newline."""
    old = path.read_text() if path.exists() else intro
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new if new.endswith("\n") else new + "\n")
