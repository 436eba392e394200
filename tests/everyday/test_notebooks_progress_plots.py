"""Notebook reprs, progress bars and plots."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

import fedmed as fm
from fedmed.backend.local import LocalLink


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


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm draws only there) and tells when a bar was drawn."""

    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty, self.drawn = tty, threading.Event()

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        if "fedmed:" in text:
            self.drawn.set()
        return super().write(text)


def slow_servers(monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> list[tuple[bool, set[str]]]:
    """Servers that answer only once the bar is on the terminal (or after 10 s: then the test fails).

    Each request records whether the bar was drawn before it was answered, and the threads alive then.
    """
    seen: list[tuple[bool, set[str]]] = []
    send = LocalLink.send

    def slow(self: LocalLink, request: bytes) -> bytes:
        drawn = terminal.drawn.wait(timeout=10 if terminal.tty else 0.2)
        seen.append((drawn, {thread.name for thread in threading.enumerate()}))
        return send(self, request)

    monkeypatch.setattr(LocalLink, "send", slow)
    return seen


def test_the_bar_appears_while_no_server_has_answered_yet_and_is_erased_at_the_end(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(fm.options, "progress_delay", 0.05)
    seen = slow_servers(monkeypatch, terminal)
    assert data()["x"].sum().compute() == 10.0
    assert [drawn for drawn, _ in seen] == [True, True]  # both servers were still thinking when it appeared
    shown = terminal.getvalue()
    assert "fedmed: " in shown and "0/2" in shown and "round 1/1" in shown
    assert shown.split("\r")[-1].strip() == ""  # leave=False: the bar was erased, not left half-drawn
    assert "fedmed-progress" not in {thread.name for thread in threading.enumerate()}  # its redraw thread stopped


def test_no_bar_and_no_redraw_thread_when_stderr_is_not_a_terminal(monkeypatch):
    terminal = Terminal(tty=False)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(fm.options, "progress_delay", 0)
    seen = slow_servers(monkeypatch, terminal)
    assert data()["x"].sum().compute() == 10.0
    assert terminal.getvalue() == ""
    assert all(not drawn and "fedmed-progress" not in threads for drawn, threads in seen)


def test_a_logistic_regression_shows_one_bar_that_names_its_iterations(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(fm.options, "progress_delay", 0)
    opened = []
    init = tqdm.__init__

    def every_redraw_shown(self, *args, **kwargs):  # mininterval=0: each answer's redraw reaches the terminal
        opened.append(kwargs.get("desc"))
        init(self, *args, **{**kwargs, "mininterval": 0})

    monkeypatch.setattr(tqdm, "__init__", every_redraw_shown)
    a = fm.Local({"y": [0, 0, 1, 1, 0], "x": [0.5, 1.0, 1.5, 3.0, 2.0]})
    b = fm.Local({"y": [1, 0, 1], "x": [2.5, 0.2, 1.2]})
    fit = fm.stats.logit(fm.FedData([a, b]), y="y", X=["x"]).compute()
    assert opened == ["fedmed"]  # one bar for the whole fit, not one per round plus one for IRLS
    shown = terminal.getvalue()
    for number in range(1, fit.iterations + 1):
        assert f"binomial IRLS round {number}/25]" in shown
    assert f"{2 * fit.iterations}/{2 * fit.iterations}" in shown  # two answers a round, counted on the one bar
    assert "IRLS:" not in shown and "round 1/1" not in shown  # no bar of its own; the rounds' label stays


def test_repr_counts_sources_in_words():
    assert repr(fm.FedData([fm.Local([1.0])])).startswith("FedData(data over 1 source: ")
    assert " over 2 sources: " in repr(data())


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
