"""Writing a results JSON so that a run interrupted at any moment leaves a whole file.

The harnesses save after every phase; the file is written next to its final
name and renamed over it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
