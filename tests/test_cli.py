"""The ``fedmed`` command: the demo runs on real loopback servers and agrees with pandas."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fedmed as fm
from fedmed import cli, demo


def test_demo_results_equal_pandas_on_the_pooled_data():
    lines: list[str] = []
    results = demo.run(print_=lines.append)
    text = "\n".join(lines)
    rows = [line.split(":") for line in text.splitlines() if line.strip().split(":")[0] in results]
    assert len(rows) == len(results) == 3
    for label, numbers in rows:
        fedmed_value, pandas_value = map(float, numbers.split())
        assert fedmed_value == pytest.approx(results[label.strip()], abs=1e-4)
        assert fedmed_value == pytest.approx(pandas_value, abs=1e-4)
    assert "4 requests in all (2 per server" in text
    assert "FedPlan · 1 output · 2 servers · 2 rounds" in text


def test_version_and_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"fedmed {fm.__version__}"
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_console_script_runs_the_demo():
    done = subprocess.run([sys.executable, "-m", "fedmed.cli", "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mean age" in done.stdout
