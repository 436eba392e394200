"""``CacheLimit``: bounded in bytes as well as answers, and never a way around a ``released`` hook.

The cache keeps answers as they are sent (msgpack bytes), at most ``limit``
of them and ``max_bytes`` in all, least recently used first out; an answer
larger than ``max_bytes`` on its own is not kept. Only an answer that passed
every ``released`` hook is kept (the ``kept`` hook), failures never are, and
a recalled answer passes every active ``released`` hook again: a hook that
raises withholds it, asked once or asked again.

Data: the extramarital-affairs survey shipped with statsmodels (Fair 1978,
6,366 rows, ``sm.datasets.fair``), as a server's fragment.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import fedmed as fm
from fedmed import wire
from fedmed.config import load_config
from fedmed.expr.rowwise import Column, Elementwise, Fragment, Literal, Map
from fedmed.privacy import Policy, Task
from fedmed.serving import BackgroundServer

WITHHELD = "withheld: this server's privacy policies could not judge the result (the server's log says why)"


@pytest.fixture(scope="module")
def fair() -> pd.DataFrame:
    return sm.datasets.fair.load_pandas().data


# -- policies a data owner might write; loaded by import path like any custom policy -------------------------------


class Counting(Policy):
    """Counts the tasks it admits (a recalled answer is not admitted) and the releases it sees."""

    def __init__(self) -> None:
        self.admitted = 0
        self.releases: list[tuple[str, Any]] = []

    def admit(self, task: Task) -> None:
        self.admitted += 1

    def released(self, task: Task, value: Any) -> None:
        self.releases.append((task.client, value))


class Breakable(Policy):
    """A ``released`` hook that breaks (a bug, not a refusal) while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True

    def released(self, task: Task, value: Any) -> None:
        if self.broken:
            raise RuntimeError("the audit database is not reachable")


class ReleaseQuota(Policy):
    """Each client receives at most ``n`` answers, whether computed or recalled."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self._given: dict[str, int] = {}

    def released(self, task: Task, value: Any) -> None:
        given = self._given.get(task.client, 0)
        if given >= self.n:
            raise task.refuse(self, f"{task.client!r} has received its {self.n} answers")
        self._given[task.client] = given + 1


class RefuseOnce(Policy):
    """Refuses the first result it judges (in ``apply``), passes the others."""

    def __init__(self) -> None:
        self.refused = False

    def apply(self, task: Task, value: Any) -> Any:
        if not self.refused:
            self.refused = True
            raise task.refuse(self, "not this time")
        return value


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("cache_test_policies")
    for cls in (Counting, Breakable, ReleaseQuota, RefuseOnce):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "cache_test_policies", module)


def entry(name: str, **params: Any) -> dict[str, Any]:
    path = f"fedmed.privacy.{name}" if name == "CacheLimit" else f"cache_test_policies.{name}"
    return {"policy": path, "params": params}


def serve(frame: pd.DataFrame, *entries: dict[str, Any]) -> tuple[fm.Server, dict[str, Policy]]:
    """A server holding ``frame`` as ``"fair"`` under ``entries``, and its policies by class name."""
    server = fm.Server({"methods": load_config(None).raw["methods"], "privacy": list(entries)})
    server["fair"] = frame
    return server, {type(p.policy).__name__: p.policy for p in server.config.privacy}


def client(server: fm.Server, name: str = "analyst") -> fm.FedData:
    return fm.FedData([fm.Simulation(server, "fair", name=name)], config=server.config)


def ask(server: fm.Server, node: Map, who: str = "analyst") -> tuple[int, dict[str, Any]]:
    """``Server.handle`` on a one-task request: the status and the decoded body (msgpack, or the test fails)."""
    status, body = server.handle(wire.pack(wire.encode_table([node]).request()), client=who)
    return status, msgpack.unpackb(body, raw=False, strict_map_key=False)


def counts(column: str, shift: float = 0.0) -> Map:
    """``(data[column] + shift).value_counts()`` as the server sees it."""
    values: Any = Column(Fragment("fair"), column)
    if shift:
        values = Elementwise("add", (values, Literal(shift)))
    return Map("value_counts", (values,))


def packed_size(value: Any, notes: list[str] | None = None) -> int:
    return len(wire.pack([value, notes or []]))


# -- bytes -----------------------------------------------------------------------------------------------------------


def test_the_bytes_bound_evicts_the_least_recently_used_answers(fair):
    columns = ["age", "yrs_married", "educ", "occupation"]
    probe, policies = serve(fair, entry("CacheLimit"))
    sizes = {}  # each answer's bytes, as the cache counts them
    for c in columns:
        before = policies["CacheLimit"].stored_bytes
        assert ask(probe, counts(c))[0] == 200
        sizes[c] = policies["CacheLimit"].stored_bytes - before
    assert all(s > 0 for s in sizes.values())

    room = sizes["age"] + sizes["yrs_married"] + sizes["educ"]  # three answers fit, not four
    server, policies = serve(fair, entry("CacheLimit", max_bytes=room), entry("Counting"))
    cache, counting = policies["CacheLimit"], policies["Counting"]
    for c in ["age", "yrs_married", "educ"]:
        ask(server, counts(c))
    assert cache.stored_bytes == room and counting.admitted == 3
    ask(server, counts("age"))  # recalled: now the most recently used
    assert counting.admitted == 3
    ask(server, counts("occupation"))  # yrs_married is the least recently used: out first
    assert cache.stored_bytes <= room
    assert len(cache._answers) == 3 - (sizes["occupation"] > sizes["yrs_married"])
    ask(server, counts("age"))
    assert counting.admitted == 4  # still kept
    ask(server, counts("yrs_married"))
    assert counting.admitted == 5  # evicted: computed again


def test_an_answer_larger_than_max_bytes_on_its_own_is_not_kept(fair):
    whole = fair["affairs"].nunique()
    assert whole > 50  # a many-valued column: its value counts are the big answer here
    server, policies = serve(fair, entry("CacheLimit", max_bytes=600), entry("Counting"))
    cache, counting = policies["CacheLimit"], policies["Counting"]
    small = ask(server, counts("children"))[1]
    assert cache.stored_bytes == packed_size(small["results"][0]["value"]) < 600
    first = ask(server, counts("affairs"))[1]
    assert len(first["results"][0]["value"]) == whole and packed_size(first["results"][0]["value"]) > 600
    again = ask(server, counts("affairs"))[1]
    assert again == first and counting.admitted == 3  # computed twice
    assert cache.stored_bytes == packed_size(small["results"][0]["value"])  # and did not push the small one out
    ask(server, counts("children"))
    assert counting.admitted == 3


def test_the_count_limit_still_applies(fair):
    server, policies = serve(fair, entry("CacheLimit", limit=2), entry("Counting"))
    for c in ["age", "educ", "children"]:
        ask(server, counts(c))
    assert len(policies["CacheLimit"]._answers) == 2
    ask(server, counts("age"))
    assert policies["Counting"].admitted == 4


def test_many_big_answers_stay_within_max_bytes():
    """The issue's case, scaled down: distinct value_counts of an all-unique column keep at most max_bytes."""
    budget = 2 * 1024 * 1024
    server, policies = serve(pd.DataFrame({"v": np.arange(100_000) + 0.5}), entry("CacheLimit", max_bytes=budget))
    one = None
    for i in range(8):
        status, body = ask(server, Map("value_counts", (Elementwise("add", (Column(Fragment("fair"), "v"),
                                                                             Literal(float(i)))),)))
        assert status == 200
        one = packed_size(body["results"][0]["value"])
    cache = policies["CacheLimit"]
    assert one > 1_000_000
    assert cache.stored_bytes <= budget and len(cache._answers) == budget // one


def test_a_recalled_answer_is_the_answer_sent_with_its_notes(fair):
    server, policies = serve(fair, entry("CacheLimit"), {"policy": "fedmed.privacy.Anonymity", "params": {"k": 50}})
    data = client(server)
    with pytest.warns(fm.PrivacyWarning):
        first = data["occupation"].value_counts().compute()
    status, body = ask(server, counts("occupation"))
    assert status == 200 and body["results"][0]["notes"]  # the withheld cells are told again
    with pytest.warns(fm.PrivacyWarning):
        again = data["occupation"].value_counts().compute()
    pd.testing.assert_series_equal(first, again)
    assert policies["CacheLimit"].describe() == "CacheLimit(limit=10000, max_bytes=67108864)"


# -- released hooks ---------------------------------------------------------------------------------------------------


def test_a_recalled_answer_passes_every_released_hook_again(fair):
    server, policies = serve(fair, entry("CacheLimit"), entry("Counting"))
    counting = policies["Counting"]
    data = client(server, "alice")
    total = data["age"].sum().compute()
    assert data["age"].sum().compute() == total == fair["age"].sum()
    assert client(server, "bob")["age"].sum().compute() == total
    assert counting.admitted == 1  # computed once, judged at every release:
    assert [who.split(":")[0] for who, _ in counting.releases] == ["alice", "alice", "bob"]
    assert counting.releases[0][1] == counting.releases[2][1]


def test_a_released_hook_that_counts_recalled_answers_refuses_them(fair):
    server, policies = serve(fair, entry("CacheLimit"), entry("ReleaseQuota", n=2), entry("Counting"))
    data = client(server, "alice")
    assert data["age"].sum().compute() == data["age"].sum().compute() == fair["age"].sum()
    with pytest.raises(fm.PrivacyError, match="'alice[^']*' has received its 2 answers") as info:
        data["age"].sum().compute()
    assert info.value.policy == "ReleaseQuota(n=2)"
    assert client(server, "bob")["age"].sum().compute() == fair["age"].sum()  # bob's quota is his own
    assert policies["Counting"].admitted == 1


def test_a_released_hook_that_raises_withholds_the_answer_and_nothing_is_kept(fair, caplog):
    server, policies = serve(fair, entry("CacheLimit"), entry("Breakable"), entry("Counting"))
    cache, breakable, counting = policies["CacheLimit"], policies["Breakable"], policies["Counting"]
    for attempt in range(2):  # asked again: withheld again, not answered from the cache
        with caplog.at_level(logging.ERROR, logger="fedmed.server"):
            status, body = ask(server, counts("religious"))
        assert status == 403 and status != 500
        error = body["results"][0]["error"]
        assert error["type"] == "PrivacyError" and error["message"] == WITHHELD
        assert "audit database" not in str(body)  # the reason stays in the server's log
        assert "audit database is not reachable" in caplog.text
        assert cache.stored_bytes == 0 and counting.admitted == attempt + 1
    breakable.broken = False
    status, body = ask(server, counts("religious"))
    assert status == 200 and cache.stored_bytes > 0 and counting.admitted == 3
    breakable.broken = True  # the hook breaks again: the recalled answer is withheld too
    status, body = ask(server, counts("religious"))
    assert status == 403 and body["results"][0]["error"]["message"] == WITHHELD
    assert counting.admitted == 3  # it was recalled, and still judged


def test_refused_and_failed_tasks_are_never_kept(fair):
    server, policies = serve(fair, entry("CacheLimit"), entry("RefuseOnce"), entry("Counting"))
    cache, counting = policies["CacheLimit"], policies["Counting"]
    data = client(server)
    with pytest.raises(fm.PrivacyError, match="not this time"):
        data["age"].sum().compute()
    assert cache.stored_bytes == 0
    assert data["age"].sum().compute() == fair["age"].sum()  # computed again, and released
    server["labels"] = pd.DataFrame({"t": ["a", "b", "c"]})
    labels = fm.FedData([fm.Simulation(server, "labels")], config=server.config)
    for _ in range(2):
        with pytest.raises(fm.TaskFailed):
            labels["t"].sum().compute()
    assert counting.admitted == 4 and len(cache._answers) == 1


def test_a_released_hook_that_raises_over_http(fair):
    """The same through a real waitress server: a msgpack error, refused again, never a 500 or a cached answer."""
    server, policies = serve(fair, entry("CacheLimit"), entry("Breakable"))
    with BackgroundServer(server.app) as running:
        data = fm.FedData([fm.Remote(running.url, "fair", timeout=20)], config=server.config)
        for _ in range(2):
            with pytest.raises(fm.PrivacyError, match="could not judge the result"):
                fm.stats.mean(data["educ"]).compute()
        policies["Breakable"].broken = False
        assert fm.stats.mean(data["educ"]).compute() == pytest.approx(fair["educ"].mean(), rel=1e-12)
        policies["Breakable"].broken = True
        with pytest.raises(fm.PrivacyError, match="could not judge the result"):
            fm.stats.mean(data["educ"]).compute()
    assert policies["CacheLimit"].stored_bytes > 0


def test_max_bytes_from_a_config():
    server = fm.Server({"methods": load_config(None).raw["methods"],
                        "privacy": [entry("CacheLimit", limit=100, max_bytes=1_000_000)]})
    cache = server.config.privacy[0].policy
    assert (cache.limit, cache.max_bytes) == (100, 1_000_000)
