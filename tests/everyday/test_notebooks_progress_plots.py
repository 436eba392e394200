"""Notebook reprs, progress bars and plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmed as fm


def data() -> fm.FedData:
    return fm.FedData([fm.Local({"x": [1.0, 2.0, 3.0], "t": [5, 8, 9], "e": [1, 0, 1]}), fm.Local({"x": [4.0], "t": [3], "e": [1]})])


def test_fed_data_shows_its_sources_in_a_notebook():
    html = data()["x"]._repr_html_()
    assert "FedData" in html and "data[&#x27;x&#x27;]" in html and html.count("<tr>") == 3


def test_lazy_result_shows_the_plan_until_computed_then_the_value():
    mean = data()["x"].sum() / data()["x"].len()
    before = mean._repr_html_()
    assert "not computed yet" in before and "FedPlan" in before
    mean.compute()
    after = mean._repr_html_()
    assert "<pre>2.5</pre>" in after and "<details>" in after


def test_tables_render_as_tables():
    described = fm.stats.describe(data()["x"])
    described.compute()
    assert "<table" in described._repr_html_()
    assert "<pre" in data().sum().explain()._repr_html_()


def on_a_terminal(script: Path) -> str:
    """What ``script`` prints on a pseudo-terminal of 100 columns (the bar only draws on a terminal)."""
    shown = subprocess.run(["script", "-qc", f"stty cols 100 rows 30; {sys.executable} {script}", "/dev/null"],
                           capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    return shown.stdout


TWO_ROUNDS = (
    "d = fm.FedData([fm.Local([1.0, 2.0, 3.0])])\n"
    "m = d.sum() / d.len()\n"
    "print(((d - m) ** 2).sum().compute())\n"
)
# every request takes 0.7 s: two rounds pass the default one-second delay
SLOW = (
    "import time\n"
    "from fedmed.backend.local import LocalLink\n"
    "send = LocalLink.send\n"
    "LocalLink.send = lambda self, request: (time.sleep(0.7), send(self, request))[1]\n"
)


def test_progress_bar_only_on_a_terminal_when_a_computation_is_slow_and_switchable(tmp_path: Path):
    script = tmp_path / "two_rounds.py"
    script.write_text("import fedmed as fm\n" + TWO_ROUNDS)
    fast = on_a_terminal(script)
    assert "fedmed:" not in fast and "2.0" in fast  # done within the delay: no bar
    script.write_text("import fedmed as fm\n" + SLOW + TWO_ROUNDS)
    slow = on_a_terminal(script)
    assert "fedmed:" in slow and "round 2/2" in slow and "2.0" in slow
    script.write_text("import fedmed as fm\nfm.options.progress = False\n" + SLOW + TWO_ROUNDS)
    switched_off = on_a_terminal(script)
    assert "fedmed:" not in switched_off and "2.0" in switched_off
    script.write_text("import fedmed as fm\nfm.options.progress_delay = 0\n" + TWO_ROUNDS)
    assert "fedmed:" in on_a_terminal(script)  # no delay: even a quick computation shows it
    # not a terminal: silent
    piped = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "fedmed:" not in piped.stderr and "2.0" in piped.stdout


def test_histogram_and_survival_curves_plot_to_png(tmp_path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = data()
    hist = fm.stats.histogram(d["x"], bins=[0.0, 2.0, 5.0]).compute()
    ax = hist.plot()
    km = fm.stats.kaplan_meier(d["t"], d["e"]).compute()
    km.plot(ax=plt.subplots()[1], label="all")
    for number in plt.get_fignums():
        path = tmp_path / f"figure{number}.png"
        plt.figure(number).savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.patches and len(ax.patches) == 2
    assert isinstance(km, pd.DataFrame) and list(km["time"]) == [3, 5, 8, 9]
    plt.close("all")
