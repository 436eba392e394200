"""The status page: metadata, policies, recent queries; never a value. Also in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import fedmed as fm
from fedmed.auth import digest

SECRET_VALUE = 987654.321


def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"age": rng.integers(18, 90, 300), "bmi": rng.normal(26, 4, 300), "sex": rng.choice(["F", "M"], 300)})
    frame.loc[5, "bmi"] = SECRET_VALUE
    return frame


@pytest.fixture
def running(serve):
    server = fm.Server("example/config.yaml")
    server["cohort 1/2"] = cohort()
    background = serve(server)
    data = fm.FedData([fm.Remote(background.url, "cohort 1/2")], config="example/config.yaml")
    fm.compute(fm.stats.describe(data["age"]))
    with pytest.raises(fm.PrivacyError):
        data[data["age"] == 30]["bmi"].sum().compute()
    return server, background


def test_status_page_shows_metadata_and_no_values(running):
    server, background = running
    page = requests.get(background.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.text
    for expected in ("cohort 1/2", "300", "age: int64", "Anonymity(k=5)", "Dominance(n=1, p=0.9)",
                     "data[&#39;age&#39;].moments()", "127.0.0.1", "403", "value_counts", "uptime"):
        assert expected in text, expected
    assert str(SECRET_VALUE) not in text and "987654" not in text
    assert "<script" not in text and "http" not in text.split("</head>")[0].replace("http-equiv", "")  # offline: no CDN


def test_status_page_escapes_names(serve):
    server = fm.Server()
    server["<script>alert(1)</script>"] = [1, 2, 3]
    text = requests.get(serve(server).url + "/", timeout=10).text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text


def test_status_page_requires_the_token_when_auth_is_on(serve):
    config = {"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}},
              "auth": {"tokens": {"alice": digest("s3cret")}}}
    url = serve(fm.Server(config)).url
    assert requests.get(url + "/", timeout=10).status_code == 401
    assert requests.get(url + "/", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200


def test_status_page_says_whether_each_fragment_counts_persons_or_rows(serve):
    config = {"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}},
              "persons": {"labs*": "patient", "visits": "mrn"}}
    server = fm.Server(config)
    server["labs 2024"] = pd.DataFrame({"patient": [1, 1, 2], "value": [4.0, 5.0, 6.0]})
    server["visits"] = pd.DataFrame({"patient": [1, 2]})
    server["cohort"] = cohort()
    text = requests.get(serve(server).url + "/", timeout=10).text
    assert "privacy rules count" in text
    cells = dict(re.findall(r"<code>([^<]*)</code>.*?<td class=\"counting\">([^<]*)</td>", text, re.DOTALL))
    assert cells["labs 2024"] == "persons by column &#39;patient&#39;"
    assert cells["visits"].startswith("persons by column &#39;mrn&#39;, but the fragment has no column &#39;mrn&#39;")
    assert cells["cohort"] == "rows: no person key declared; a person with several rows counts several times"


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def browser() -> str:
    """Chromium's path. Without it a developer's machine skips the browser test, but CI fails it:
    .ci/run sets FEDMED_CI, so a CI machine that could not install Chromium cannot pass unseen."""
    if BROWSER is None:
        missing = "no Chromium on this machine (apt-get install chromium to run this test)"
        if os.environ.get("FEDMED_CI"):
            pytest.fail(f"FEDMED_CI is set and {missing}: CI must render the status page in a real browser")
        pytest.skip(missing)
    return BROWSER


def test_status_page_renders_in_a_real_browser(browser: str, running, tmp_path: Path):
    _, background = running
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", background.url + "/"], capture_output=True, text=True, timeout=60)
    assert "cohort 1/2" in dom.stdout and "Privacy policies" in dom.stdout
    shot = tmp_path / "status.png"
    subprocess.run([browser, *flags, "--window-size=1200,1000", f"--screenshot={shot}", background.url + "/"],
                   capture_output=True, timeout=60)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_only_admin_tokens_see_who_asked_what(serve):
    config = {"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}},
              "auth": {"tokens": {"owner": digest("0wner"), "alice": digest("s3cret")}, "admins": ["owner"]}}
    server = fm.Server(config)
    server["values"] = [1, 2, 3]
    url = serve(server).url
    assert fm.FedData([fm.Remote(url, "values", token="s3cret")]).sum().compute() == 6
    as_alice = requests.get(url + "/", headers={"Authorization": "Bearer s3cret"}, timeout=10).text
    as_owner = requests.get(url + "/", headers={"Authorization": "Bearer 0wner"}, timeout=10).text
    assert "admins only" in as_alice and "alice" not in as_alice and "data.sum()" not in as_alice
    assert "admins only" not in as_owner and "alice" in as_owner and "data.sum()" in as_owner
    assert "values" in as_alice  # the rest of the page is the same for every token


def test_admins_must_be_names_of_tokens():
    with pytest.raises(fm.ConfigError, match="admins"):
        fm.Server({"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}},
                   "auth": {"tokens": {"alice": digest("s3cret")}, "admins": ["mallory"]}})
