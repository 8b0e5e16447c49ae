"""Atomic result files (write a temp file, then ``os.replace``) and run metadata."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys


def atomic_write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str) -> list[dict]:
    """Rows of a metrics file with numbers parsed back (int where possible, else float)."""

    def num(v: str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, encoding="utf-8", newline="") as f:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def versions() -> dict:
    """Versions of Python and of the packages that decide the numbers, plus the git commit."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:
        out["git_commit"] = None
    return out
