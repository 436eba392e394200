"""Shared material of the privacy red-team tests: the cohort, configs, and checks.

Not a test module (pytest collects ``test_*.py`` only). The test files load
it by file path, since ``tests`` is not an importable package.

The cohort has 200 rows: ``id`` 0..199, ``age`` (whole years, 20..89),
``y`` (a lab value) and a categorical diagnosis ``dx`` whose level
``"RARE"`` is held by exactly one person, the attacker's target ``id == 17``
(age ``TARGET_AGE``).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

import fedmed as fm

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "example" / "config.yaml"

N = 200
TARGET_ID = 17
TARGET_AGE = 77
RARE = "RARE"
COMMON = ("A", "B", "C")


def cohort(n: int = N, seed: int = 20240517, start: int = 0, target: bool = True) -> pd.DataFrame:
    """``n`` patients; with ``target`` the row ``id == 17`` is the only one with ``dx == "RARE"``."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n)
    age = rng.integers(20, 90, n).astype("int64")
    y = np.round(rng.normal(5.0, 2.0, n), 3)
    dx = np.array(COMMON, dtype=object)[rng.integers(0, len(COMMON), n)]
    if target and start <= TARGET_ID < start + n:
        row = TARGET_ID - start
        age[row] = TARGET_AGE
        dx[row] = RARE
    return pd.DataFrame(
        {"id": ids, "age": age, "y": y, "dx": pd.Categorical(dx, categories=[*COMMON, RARE])}
    )


def example_methods() -> dict[str, Any]:
    """The ``methods`` of example/config.yaml, as loaded by yaml."""
    with open(EXAMPLE_CONFIG, encoding="utf-8") as f:
        return copy.deepcopy(yaml.safe_load(f)["methods"])


def example_privacy() -> list[dict[str, Any]]:
    with open(EXAMPLE_CONFIG, encoding="utf-8") as f:
        return copy.deepcopy(yaml.safe_load(f)["privacy"])


def policy(name: str, **params: Any) -> dict[str, Any]:
    """A config entry for ``fedmed.privacy.<name>``."""
    return {"policy": f"fedmed.privacy.{name}", "params": params}


def config(*policies: dict[str, Any]) -> dict[str, Any]:
    """A dict config: the example's methods and exactly ``policies``."""
    return {"methods": example_methods(), "privacy": list(policies)}


def serve(cfg: Any, frame: pd.DataFrame | None = None, name: str = "analyst") -> tuple[fm.Server, fm.FedData]:
    """A server holding ``frame`` (the cohort by default) as ``"cohort"``, and a client over it."""
    server = fm.Server(config=cfg)
    server["cohort"] = cohort() if frame is None else frame
    data = fm.FedData([fm.Simulation(server, "cohort", name=name)], config=server.config)
    return server, data


def suppressed(
    compute: Callable[[], Any], policy_name: "str | tuple[str, ...]", data: fm.FedData | None = None
) -> fm.PrivacyError:
    """Run ``compute`` expecting a ``PrivacyError`` from ``policy_name`` (or one of several);
    check that it says where it happened. ``compute`` may run a whole attack and
    return what it extracted: the failure message then shows the extracted value."""
    names = (policy_name,) if isinstance(policy_name, str) else tuple(policy_name)
    with pytest.raises(fm.PrivacyError) as info:
        value = compute()
        pytest.fail(f"expected {' or '.join(names)} to suppress the query, but the attack got {value!r}")
    err = info.value
    assert err.policy is not None and err.policy.startswith(tuple(f"{n}(" for n in names)), (err.policy, str(err))
    assert err.fragment == "cohort", err.fragment
    assert err.operation, "the error must name the operation"
    if data is not None:
        assert err.server == data.sources[0].server, (err.server, data.sources[0].server)
    return err


def check_honest(data: fm.FedData, frame: pd.DataFrame) -> None:
    """Honest analyses on the same server give the exact pandas/scipy answers (threshold policies only)."""
    age = data["age"]
    mean, desc, ttest, counts = fm.compute(
        fm.stats.mean(age),
        fm.stats.describe(age),
        fm.stats.ttest_ind(age[data["dx"] == "A"], age[data["dx"] == "B"]),
        data["dx"].value_counts(),
    )
    assert mean == pytest.approx(frame["age"].mean(), rel=1e-12)
    assert desc["count"] == len(frame)
    assert desc["std"] == pytest.approx(frame["age"].std(), rel=1e-9)
    # an extreme is one person's value unless at least k persons hold it: exact, or withheld (NaN)
    for stat, truth_value in (("min", frame["age"].min()), ("max", frame["age"].max())):
        held = int((frame["age"] == truth_value).sum())
        assert desc[stat] == truth_value or (held < 5 and math.isnan(desc[stat])), (stat, desc[stat], held)
    ref = sps.ttest_ind(frame.loc[frame.dx == "A", "age"], frame.loc[frame.dx == "B", "age"])
    assert ttest.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ttest.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    truth = frame["dx"].value_counts()
    # a level is exact, or withheld to protect the rare one (secondary suppression): the total
    # minus the released levels is 0 or at least k rows, never the rare count
    shown = {level: counts[level] for level in COMMON if level in counts.index}
    assert all(shown[level] == truth[level] for level in shown) and len(shown) >= len(COMMON) - 1, shown
    recovered = len(frame) - int(counts.sum())
    assert recovered == 0 or recovered >= 5, recovered


def quietly(compute: Callable[[], Any]) -> Any:
    """``compute()`` with PrivacyWarnings (withheld cells) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        warnings.simplefilter("ignore", FutureWarning)  # pandas' groupby(observed=...) on the server
        return compute()


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
