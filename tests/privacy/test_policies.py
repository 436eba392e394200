"""Each policy on its own: ComplexityCap, Coarsening, Saturation, filter/reject scoping,
``on_suppressed`` on the client, and a custom policy loaded by import path.

Tests that FAIL here show a policy that misbehaves (see the docstring).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("redteam_support", HERE / "redteam_support.py")
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID


# -- 8. the complexity cap ------------------------------------------------------------------------


def chain(x: fm.FedData, links: int) -> fm.FedData:
    """``x + 0 + 1 + ... + (links - 1)``: 2 nodes per link (a distinct constant and an add)."""
    for i in range(links):
        x = x + i
    return x


def test_complexity_cap_refuses_more_nodes_than_the_cap_and_says_how_many():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("ComplexityCap", cap=200)), frame)
    # fragment, column, 2 per link, the map: 3 + 2 * links distinct nodes
    assert chain(data["age"], 98).sum().compute() == frame["age"].sum() + rt.N * sum(range(98))  # 199 nodes
    err = rt.suppressed(lambda: chain(data["age"], 99).sum().compute(), "ComplexityCap", data)  # 201 nodes
    assert "201 nodes" in err.message and "at most 200" in err.message
    err = rt.suppressed(lambda: chain(data["age"], 150).sum().compute(), "ComplexityCap", data)
    assert "303 nodes" in err.message
    # the cap counts distinct nodes: a 122-node subtree used four times is 2 + 122 + 3 + 1 = 128 nodes
    shared = chain(data["age"], 60)
    assert (shared + shared + shared + shared).sum().compute() == 4 * (frame["age"] + sum(range(60))).sum()
    # next to Anonymity, which judges each row-wise step by recomputing the task, at most 64 steps
    _, example = rt.serve(rt.EXAMPLE_CONFIG, frame)
    assert chain(example["age"], 60).sum().compute() == frame["age"].sum() + rt.N * sum(range(60))
    err = rt.suppressed(lambda: chain(example["age"], 98).sum().compute(), "Anonymity", example)
    assert "more than 64 row-wise steps" in err.message


def test_complexity_cap_alone_with_a_small_cap():
    _, data = rt.serve(rt.config(rt.policy("ComplexityCap", cap=5)))
    assert data["age"].sum().compute() == rt.cohort()["age"].sum()  # fragment, column, map: 3 nodes
    err = rt.suppressed(lambda: (data["age"] * (data["id"] == T)).sum().compute(), "ComplexityCap", data)
    assert "7 nodes" in err.message and "at most 5" in err.message


# -- 10. Coarsening and Saturation ----------------------------------------------------------------


def test_coarsening_rounds_sums_and_counts_but_not_value_counts_labels():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Coarsening", value=10)), frame)
    total, n, count = fm.compute(data["age"].sum(), data["age"].len(), data["y"].count())
    assert total == round(frame["age"].sum() / 10) * 10 and total % 10 == 0
    assert (n, count) == (200, 200)
    assert data["y"].sum().compute() == pytest.approx(round(frame["y"].sum() / 10) * 10)
    counts = data["age"].value_counts().compute()
    truth = frame["age"].value_counts()
    assert set(counts.index) == set(truth.index)  # labels untouched: 77 stays 77, not 80
    assert all(c % 10 == 0 for c in counts)
    assert all(counts[v] == round(truth[v] / 10) * 10 for v in truth.index)
    hist = data["age"].histogram([0, 33, 66, 130]).compute()
    assert hist.edges.tolist() == [0, 33, 66, 130]  # edges untouched
    assert all(c % 10 == 0 for c in hist.counts)


def test_saturation_clips_every_released_number():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Saturation", min=0, max=100)), frame)
    total, n, negative = fm.compute(data["age"].sum(), data["age"].len(), (data["age"] - 1000).sum())
    assert (total, n, negative) == (100, 100, 0)
    small = data[data["age"] < 22]["age"].len().compute()
    assert small == int((frame["age"] < 22).sum()) < 100  # inside the range: exact
    counts = data["dx"].value_counts().compute()
    assert set(counts.index) == set(rt.COMMON) | {rt.RARE}  # labels untouched ...
    assert all(0 <= c <= 100 for c in counts)  # ... counts clipped


# -- 10. filter / reject globs ---------------------------------------------------------------------


def noisy(**scope) -> dict:
    return {**rt.policy("Noise", mode="laplace", epsilon=1.0, bounds=[0, 120], seed=11), **scope}


def test_noise_filtered_to_len_touches_len_but_not_sum():
    frame = rt.cohort()
    server, data = rt.serve(rt.config(noisy(filter=["*.len()"])), frame)
    lens = [data["age"].len().compute() for _ in range(30)]
    sums = [data["age"].sum().compute() for _ in range(30)]
    assert len(set(lens)) > 1 and all(abs(v - rt.N) < 30 for v in lens)
    assert set(sums) == {frame["age"].sum()}
    # min is refused by Noise, but Noise does not apply to it here
    assert data["age"].min().compute() == frame["age"].min()
    assert server.config.privacy[0].applied == 30


def test_noise_rejecting_len_touches_everything_else():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(noisy(reject=["*.len()"])), frame)
    assert {data["age"].len().compute() for _ in range(30)} == {rt.N}
    sums = {data["age"].sum().compute() for _ in range(30)}
    assert len(sums) == 30 and frame["age"].sum() not in sums
    rt.suppressed(lambda: data["age"].max().compute(), "Noise", data)


def test_filter_with_the_documented_signature_pattern_matches_it():
    """Patterns take ``*`` and ``?`` only; brackets are literal, so a signature pattern matches its
    own task (with fnmatch's character classes it matched nothing: the policy failed open)."""
    frame = rt.cohort()
    _, data = rt.serve(rt.config(noisy(filter=["data['age'].sum()"])), frame)
    sums = {data["age"].sum().compute() for _ in range(10)}
    assert frame["age"].sum() not in sums, f"Noise did not apply: data['age'].sum() released exactly, {sums}"
    assert len(sums) == 10
    assert {data["y"].len().compute() for _ in range(10)} == {rt.N}  # other tasks untouched


# -- 10. on_suppressed on the client -----------------------------------------------------------------


def three_servers(tiny: pd.DataFrame) -> tuple[list[fm.Server], fm.FedData, pd.DataFrame]:
    whole = rt.cohort(target=False)
    halves = [whole.iloc[:100].reset_index(drop=True), whole.iloc[100:].reset_index(drop=True)]
    servers = [fm.Server(config=rt.EXAMPLE_CONFIG) for _ in range(3)]
    for server, frame in zip(servers, [*halves, tiny]):
        server["cohort"] = frame
    sources = [fm.Simulation(s, "cohort", name=name) for s, name in zip(servers, ["north", "south", "tiny"])]
    return servers, fm.FedData(sources, config=rt.EXAMPLE_CONFIG), whole


def test_on_suppressed_raises_by_default_and_skip_pools_the_servers_that_answered():
    tiny = rt.cohort(n=3, start=500, target=False)
    _, data, whole = three_servers(tiny)
    tiny_name = data.sources[2].server
    with pytest.raises(fm.PrivacyError) as info:
        data["age"].sum().compute()
    assert info.value.server == tiny_name and info.value.policy == "Anonymity(k=5)"
    with pytest.raises(fm.PrivacyError):
        fm.compute(fm.stats.mean(data["age"]))
    with pytest.warns(fm.PrivacyWarning, match=rf"sum pooled 2 of 3 sources; left out: {tiny_name} \['cohort'\]"):
        total = data["age"].sum().compute(on_suppressed="skip")
    assert total == whole["age"].sum()
    with pytest.warns(fm.PrivacyWarning, match=tiny_name):
        mean, ttest = fm.compute(
            fm.stats.mean(data["age"]),
            fm.stats.ttest_ind(data["age"][data["dx"] == "A"], data["age"][data["dx"] == "B"]),
            on_suppressed="skip",
        )
    assert mean == pytest.approx(whole["age"].mean(), rel=1e-12)
    assert ttest.n == int(whole["dx"].isin(["A", "B"]).sum())
    with pytest.raises(ValueError):
        data["age"].sum().compute(on_suppressed="ignore")


def test_on_suppressed_skip_when_every_server_is_suppressed_raises():
    _, data, _ = three_servers(rt.cohort(n=3, start=500, target=False))
    # ids 1, 101 and 501: one row on each server, so each server suppresses it
    with pytest.raises(fm.PrivacyError):
        data[data["id"] % 100 == 1]["age"].sum().compute(on_suppressed="skip")


def test_on_suppressed_skip_leaves_a_server_out_of_every_part_of_one_statistic():
    """FAILS today: ``skip`` decides per aggregate, not per statistic.

    The third server has 6 rows, one with ``y = 500``: Dominance suppresses
    its ``sum(y)`` but Anonymity lets its ``count(y)`` through, so
    ``sum(y) / count(y)`` divides the sum over two servers by the count over
    three, and the "mean" is wrong (with only a warning about the sum).
    """
    tiny = pd.DataFrame({
        "id": range(500, 506), "age": [30, 31, 32, 33, 34, 35], "y": [1.0, 1.0, 1.0, 1.0, 1.0, 500.0],
        "dx": pd.Categorical(["A"] * 6, categories=[*rt.COMMON, rt.RARE]),
    })
    _, data, whole = three_servers(tiny)
    try:
        with pytest.warns(fm.PrivacyWarning, match="pooled 2 of 3"):
            mean = (data["y"].sum() / data["y"].count()).compute(on_suppressed="skip")
    except fm.PrivacyError:  # refusing the statistic is consistent too
        return
    answered = whole["y"].mean()  # north and south; the third server's count must go with its sum
    assert mean == pytest.approx(answered, rel=1e-12), (
        f"sum(y)/count(y) under skip = {mean!r}: sum over 2 servers / count over 3; the 2 that answered give {answered!r}"
    )


# -- 11. a custom policy, by import path ----------------------------------------------------------


def custom_config() -> dict:
    return {
        "methods": rt.example_methods(),
        "privacy": [
            {"policy": "redteam_policies.ForbidColumns", "params": {"columns": ["id"]}},
            *rt.example_privacy(),
        ],
    }


def test_custom_policy_loaded_by_import_path(monkeypatch):
    monkeypatch.delitem(sys.modules, "redteam_policies", raising=False)
    with pytest.raises(fm.ConfigError, match="redteam_policies"):
        fm.Server(config=custom_config())  # tests/privacy is not on the path yet
    monkeypatch.syspath_prepend(str(HERE))
    frame = rt.cohort()
    server, data = rt.serve(custom_config(), frame)
    custom = server.config.privacy[0].policy
    assert type(custom).__name__ == "ForbidColumns" and isinstance(custom, fm.privacy.Policy)
    # the identifier column is off limits: attacks 1-3 and the tracker all read it
    for attack in (
        lambda: data[data["id"] == T]["age"].sum(),
        lambda: (data["age"] * ((data["id"] != T) ** 1)).sum(),
        lambda: data[data["id"] < 100]["age"].sum(),
    ):
        err = rt.suppressed(lambda: attack().compute(), "ForbidColumns", data)
        assert err.policy == "ForbidColumns(columns=['id'])"
        assert "['id']" in err.message
    # honest analyses pass it (and the example's policies after it)
    rt.quietly(lambda: rt.check_honest(data, frame))
    assert "data['age'].moments()" in custom._log
    assert not any("'id'" in signature for signature in custom._log)
    monkeypatch.delitem(sys.modules, "redteam_policies", raising=False)


def test_custom_policy_scoped_with_reject(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    cfg = custom_config()
    cfg["privacy"][0]["reject"] = ["*.len()"]
    frame = rt.cohort()
    _, data = rt.serve(cfg, frame)
    assert data[data["id"] < 100]["age"].len().compute() == 100  # not in its scope
    rt.suppressed(lambda: data[data["id"] < 100]["age"].sum().compute(), "ForbidColumns", data)
    monkeypatch.delitem(sys.modules, "redteam_policies", raising=False)
