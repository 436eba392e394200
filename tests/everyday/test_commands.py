"""The command line: serve files, check configs (with line numbers), version and help."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd

import fedmed as fm
from fedmed import cli

SUM = "{map: fedmed.ops.private.sum, reduce: fedmed.ops.public.sum}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmed.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_config_lists_operations_and_policies():
    done = run_cli("check-config", "example/config.yaml")
    assert done.returncode == 0, done.stderr
    assert "example/config.yaml: OK" in done.stdout
    assert "policy: Anonymity(k=5)" in done.stdout and "aggregates (22)" in done.stdout
    assert "elementwise (34)" in done.stdout and "to_datetime, to_numeric" in done.stdout


def test_check_config_errors_name_the_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"methods:\n  add: fedmed.ops.binary.add\n  sum: {SUM}\n  mul: fedmed.ops.binary.mull\nprivacy: []\n")
    done = run_cli("check-config", str(bad))
    assert done.returncode == 1
    assert done.stderr.startswith(f"{bad}:4: ") and "no attribute 'mull'" in done.stderr

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "methods:\n  add: fedmed.ops.binary.add\nprivacy:\n  - policy: fedmed.privacy.Anonymity\n    params: {k: 5}\n"
        "  - policy: fedmed.privacy.Dominance\n    params: {q: 3}\n"
    )
    done = run_cli("check-config", str(policy))
    assert done.stderr.startswith(f"{policy}:7: ") and "unexpected keyword argument 'q'" in done.stderr

    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("methods:\n  add: [unclosed\n")
    done = run_cli("check-config", str(syntax))
    assert re.match(rf"{re.escape(str(syntax))}:\d+: ", done.stderr) and "not valid YAML" in done.stderr


@contextlib.contextmanager
def fedmed_serve(*args: str, lines: int) -> Iterator[tuple[list[str], str]]:
    """``fedmed serve`` with ``args`` on a free port: its first ``lines`` of output and its URL; Ctrl-C after."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "fedmed.cli", "serve", "--config", "example/config.yaml", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        head = [process.stdout.readline() for _ in range(lines)]  # type: ignore[union-attr]
        yield head, re.search(r"http://127\.0\.0\.1:\d+", head[0]).group(0)  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0 and "stopped." in out


def test_serve_loads_files_prints_them_and_stops_on_ctrl_c(tmp_path: Path):
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"age": range(30), "bmi": [20.0 + i / 10 for i in range(30)]}).to_csv(csv, index=False)
    js = tmp_path / "extra.json"
    pd.DataFrame({"x": [1, 2, 3, 4, 5, 6]}).to_json(js)
    with fedmed_serve("--data", f"cohort={csv}", "--data", f"extra={js}", lines=6) as (lines, url):
        assert "fragment 'cohort': 30 rows" in lines[1] and "fragment 'extra': 6 rows" in lines[2]
        assert "Anonymity(k=5)" in lines[3]
        data = fm.FedData([fm.Remote(url, "cohort")], config="example/config.yaml")
        assert data["age"].sum().compute() == sum(range(30))


def test_serve_reports_bad_input_clearly(tmp_path: Path):
    done = run_cli("serve", "--config", "example/config.yaml", "--data", "cohort")
    assert done.returncode == 2 and "NAME=FILE" in done.stderr
    done = run_cli("serve", "--config", "example/config.yaml", "--data", f"x={tmp_path / 'a.xlsx'}")
    assert done.returncode == 2 and "unsupported file type" in done.stderr


def test_help_reads_well(capsys):
    assert cli.main([]) == 0
    text = capsys.readouterr().out
    for command in ("serve", "check-config", "demo"):
        assert command in text


def test_serve_in_place_queries_parquet_files_with_duckdb(tmp_path: Path):
    import pytest

    pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")  # to write the test files
    parts = [pd.DataFrame({"age": range(i * 20, i * 20 + 20)}) for i in range(3)]
    for i, part in enumerate(parts):
        part.to_parquet(tmp_path / f"part-{i}.parquet")
    with fedmed_serve("--data", f"registry={tmp_path / '*.parquet'}", "--in-place", lines=2) as (lines, url):
        assert "fragment 'registry': 60 rows (Parquet(read_parquet(" in lines[1]
        data = fm.FedData([fm.Remote(url, "registry")], config="example/config.yaml")
        assert data["age"].sum().compute() == sum(range(60))
    done = run_cli("serve", "--config", "example/config.yaml", "--data", f"x={tmp_path / 'none-*.parquet'}",
                   "--in-place")
    assert done.returncode == 2 and "none-*.parquet" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("serve", "--config", "example/config.yaml", "--data", f"x={tmp_path / 'a.json'}", "--in-place")
    assert done.returncode == 2 and "--in-place serves .parquet and .csv files" in done.stderr
