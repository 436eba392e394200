"""Results: the machine description, sections of tables, and the two files a run writes.

Each section is a ``Section``: a title, a paragraph on what it measures, one
or more tables of formatted cells, notes, and ``data`` holding every number
unformatted. ``write`` renders ``latest.md`` (the tables) and
``latest.json`` (machine, settings, tables and data), each written to a
``.tmp`` file first and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    key: str
    title: str
    about: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    quote: str = ""  # output of another program, shown verbatim


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, Python and library versions, date and the checkout's commit."""
    cpu = _first(Path("/proc/cpuinfo"), "model name") or platform.processor() or platform.machine()
    mem_kb = _first(Path("/proc/meminfo"), "MemTotal")
    ram_gb = round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in ("fedmed", "numpy", "pandas", "msgpack", "waitress", "flask")},
        "commit": _commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _first(path: Path, key: str) -> str | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fedmed"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + (" (fedmed/ has uncommitted changes)" if dirty.stdout.strip() else "")


# -- formatting ---------------------------------------------------------
def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.1f}"


def ratio(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}x"


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def markdown(run: dict[str, Any], sections: list[Section]) -> str:
    m = run["machine"]
    v = m["versions"]
    lines = [
        f"# FedMed benchmarks ({run['mode']} mode)",
        "",
        f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores usable, {m['ram_gb']} GB RAM, "
        f"{m['os']}; Python {m['python']}, numpy {v['numpy']}, pandas {v['pandas']}, waitress {v['waitress']}; "
        f"fedmed {v['fedmed']} at {m['commit']}; {m['date']}; whole run {run['seconds']:.0f} s.",
        "",
        "A shared, noisy machine: wall times move from run to run; ratios are measured side by side "
        "in this one run, and request and byte counts are exact.",
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.about]
        for table in section.tables:
            lines += ["", f"**{table.caption}**", "", _table(table)]
        if section.notes:
            lines.append("")
            lines += [f"- {note}" for note in section.notes]
        if section.quote:
            lines += ["", "```", section.quote, "```"]
    return "\n".join(lines) + "\n"


def _table(table: Table) -> str:
    out = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(out)


def write(run: dict[str, Any], sections: list[Section], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    document = {**run, "sections": {s.key: asdict(s) for s in sections}}
    files = (
        (out / "latest.md", markdown(run, sections)),
        (out / "latest.json", json.dumps(document, indent=1, default=_plain, allow_nan=True) + "\n"),
    )
    for path, text in files:
        _write_atomically(path, text)
    return files[0][0], files[1][0]


def write_json(document: dict[str, Any], out: Path, name: str) -> Path:
    """``document`` as JSON at ``out``: a ``.json`` path, or a folder to write ``name`` into."""
    path = out if out.suffix == ".json" else out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(document, indent=1, default=_plain) + "\n")
    return path


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)  # a reader never sees half a file


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
