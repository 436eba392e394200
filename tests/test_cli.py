"""The ``fedmed`` command: the demo runs on real loopback servers and agrees with pandas; person keys."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

import fedmed as fm
from fedmed import cli, demo, wire


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


def test_serve_person_flag_reaches_the_server_and_its_output(tmp_path: Path):
    labs = pd.DataFrame({"patient": [p // 3 for p in range(90)], "value": [float(i % 11) for i in range(90)]})
    labs.to_csv(tmp_path / "labs.csv", index=False)
    pd.DataFrame({"age": range(20, 50)}).to_csv(tmp_path / "cohort.csv", index=False)
    config = tmp_path / "config.yaml"  # the example config, with a person column that --person overrides
    config.write_text(Path("example/config.yaml").read_text() + '\npersons:\n  "lab*": visit\n')
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "fedmed.cli", "serve", "--config", str(config), "--port", "0",
         "--data", f"labs={tmp_path / 'labs.csv'}", "--data", f"cohort={tmp_path / 'cohort.csv'}",
         "--person", "labs=patient"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[0]).group(0)  # type: ignore[union-attr]
        assert "fragment 'labs': 90 rows; privacy rules count persons by column 'patient'" in lines[1]
        assert ("fragment 'cohort': 30 rows; privacy rules count rows: no person key declared; "
                "a person with several rows counts several times") in lines[2]
        info = wire.unpack(requests.get(url + "/v1/info", timeout=10).content)
        assert info["fragments"]["labs"]["person"] == "patient" and "person" not in info["fragments"]["cohort"]
        data = fm.FedData([fm.Remote(url, "labs")], config="example/config.yaml")
        assert data["value"].sum().compute() == labs["value"].sum()
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0 and "stopped." in out


@pytest.mark.parametrize("spec", ["labs", "=patient", "labs="])
def test_serve_refuses_a_malformed_person_flag(spec):
    done = subprocess.run([sys.executable, "-m", "fedmed.cli", "serve", "--config", "example/config.yaml",
                           "--person", spec], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--person expects GLOB=COLUMN" in done.stderr and "Traceback" not in done.stderr


def test_person_columns_keep_the_order_given():
    assert cli.person_columns(["labs*=patient", "cohort=id=2"]) == {"labs*": "patient", "cohort": "id=2"}
    with pytest.raises(ValueError, match="given twice"):
        cli.person_columns(["labs=a", "labs=b"])


def test_check_config_lists_persons_and_names_the_line_of_a_bad_one(tmp_path: Path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text('methods:\n  add: fedmed.ops.binary.add\npersons:\n  "labs*": patient\n  cohort: id\n')
    assert cli.main(["check-config", str(good)]) == 0
    assert "persons: fragments 'labs*' by column 'patient', 'cohort' by column 'id'" in capsys.readouterr().out
    assert cli.main(["check-config", "example/config.yaml"]) == 0
    assert "persons: none declared (privacy rules count rows" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text('methods:\n  add: fedmed.ops.binary.add\npersons:\n  "labs*": patient\n  "it\'s [x].*": 3\n')
    assert cli.main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}:5: ")
    bad.write_text("methods:\n  add: fedmed.ops.binary.add\npersons: [patient]\n")
    assert cli.main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}:3: ")


def test_serve_reports_columns_that_loaded_as_text_although_most_values_are_numbers(tmp_path: Path):
    rows = ["bmi,sex"] + [f"{20 + i % 9}.5,{'FM'[i % 2]}" for i in range(30)] + ["unknown,F", ">89,M"]
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "fedmed.cli", "serve", "--config", "example/config.yaml", "--port", "0",
         "--data", f"cohort={tmp_path / 'cohort.csv'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    assert "fragment 'cohort': 32 rows" in lines[1]
    assert ("column 'bmi' loaded as text although 30 of its 32 values are numbers (2 are not): analysts convert it "
            "with data['bmi'].to_numeric()") in lines[2]
    assert "sex" not in lines[2]  # a text column of text is no news


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "fedmed.cli", "serve", "--config", "example/config.yaml",
                               "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"fedmed serve: port {port} on 127.0.0.1 is already in use; stop the program using it or choose another "
        "port with --port")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
