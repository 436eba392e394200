"""``benchmarks/tables.py --quick`` end to end (300 patients, so that it stays a few seconds) (issue 18): every section ran, requests per server stayed within
Newton iterations + 1, every engine's coefficients equal statsmodels' on the pooled tables, and DuckDB and Dask
were refused under privacy policies, as designed. No time is asserted. Also ``example/tables_data.py``'s cohort:
seeded, persons on one server each, uneven servers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"pooled", "pandas", "duckdb", "dask", "pandas-policies"}


def tables_data():
    spec = importlib.util.spec_from_file_location("tables_data", ROOT / "example" / "tables_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cohort_is_seeded_and_keeps_each_person_on_one_server(tmp_path: Path) -> None:
    data = tables_data()
    sites = data.make(servers=3, patients=600, labs_per_patient=4, seed=1)
    again = data.make(servers=3, patients=600, labs_per_patient=4, seed=1)
    for one, other in zip(sites, again):
        for name in data.TABLES:
            pd.testing.assert_frame_equal(one[name], other[name])
    ids = [set(site["patients"]["patient_id"]) for site in sites]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 600
    assert len(ids[0]) > len(ids[1]) > len(ids[2])  # uneven
    for site, own in zip(sites, ids):
        assert set(site["labs"]["patient_id"]) <= own and set(site["visits"]["patient_id"]) <= own
    labs = data.pool(sites)["labs"]
    assert 0 < labs["value"].isna().mean() < 0.1 and set(labs["test"]) == set(data.TESTS)
    assert len(set().union(*ids) - set(labs["patient_id"])) > 0  # some patients have no labs
    pd.to_datetime(labs["date"], format="%Y-%m-%d")  # ISO dates

    paths = data.write(tmp_path, sites=sites)
    assert pd.read_parquet(paths[2]["visits"]).equals(sites[2]["visits"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_quick_run_fits_on_every_engine_within_the_request_bound(tmp_path: Path) -> None:
    for module in ("duckdb", "dask.dataframe", "pyarrow", "statsmodels"):
        pytest.importorskip(module)
    out = tmp_path / "tables.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/tables.py", "--quick", "--patients", "300", "--concurrent", "--data", str(tmp_path / "data"),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["failures"] == []
    assert {"cpu", "cores", "ram_gb", "python", "versions", "date"} <= set(result["machine"])
    sections = result["sections"]
    assert set(sections) == SECTIONS
    reference = sections["pooled"]["fits"][0]
    assert reference["converged"] and set(reference["params"]) == {"Intercept", *result["settings"]["X"]}
    for name in SECTIONS - {"pooled"}:
        section = sections[name]
        assert "error" not in section, (name, section)
        for fit in section["fits"]:
            assert "refused" not in fit, (name, fit)
            assert fit["converged"] and fit["nobs"] == reference["nobs"]
            assert max(fit["requests_per_server"]) <= fit["iterations"] + 1, (name, fit)
            assert min(fit["requests_per_server"]) >= fit["iterations"]  # every round reached every server
        assert section["max_abs_diff"] <= 1e-6, (name, section["max_abs_diff"])
        assert section["peak"] >= section["idle"]["peak"] > 0
    for name in ("duckdb", "dask"):  # refused under policies by design, recorded
        assert "not judged by this server's privacy rules yet" in sections[name]["policies"]["refused"]
    assert "| pandas | config.yaml + persons |" in done.stdout
