"""``benchmarks/load.py --quick`` runs end to end: no errors, a requests/second figure (no timing asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_load_run_has_no_errors_and_reports_throughput():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"[\d,.]+ req/s", done.stdout), done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["requests"] > 0
    assert result["requests_per_second"] > 0
    assert result["setup"]["rows"] == 10_000 and result["setup"]["clients"] == 16
    assert result["setup"]["host"] == "127.0.0.1"
