from __future__ import annotations

from pathlib import Path


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
