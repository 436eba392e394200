"""Policy scope follows the task itself, never a shortened rendering of it.

A config narrows a policy with ``filter``/``reject`` glob patterns. They
are matched against ``task.full_signature``, the whole task as code;
``task.signature`` cuts every subexpression at ``MAX_CODE`` characters for
messages, and matching against it let a long constant push ``.len()`` out of
sight of a ``*.len()`` filter: exact counts under a Noise policy, and no
budget charged. A task whose whole text would be too long to write (a DAG
that reuses nodes) fails closed: every ``filter`` matches, no ``reject``
does, so the policy applies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import fedmed as fm
from fedmed.expr.node import MAX_CODE, render_code, render_full
from fedmed.privacy import Task
from fedmed.privacy.base import Scoped

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID
#: Every id but the target's: a filter whose text alone is longer than MAX_CODE.
LONG_IDS = [i for i in range(rt.N) if i != T]


def noisy(epsilon: float = 0.5, **scope) -> dict:
    return {**rt.policy("Noise", mode="laplace", epsilon=epsilon, bounds=[0, 120], seed=5), **scope}


def task_of(result: fm.LazyResult) -> Task:
    return Task("cohort", 1, result.node.map)


def applies(result: fm.LazyResult, filter=(), reject=()) -> bool:
    return Scoped(object(), filter=filter, reject=reject).applies(task_of(result))


def doubled(x: fm.FedData, times: int, method: bool = False) -> fm.FedData:
    """``x = x + x`` (or ``x = x.fillna(x)``) ``times`` times: a DAG of ``times`` nodes whose text doubles each time."""
    for _ in range(times):
        x = x.fillna(x) if method else x + x
    return x


@pytest.fixture
def data() -> fm.FedData:
    return rt.serve(rt.config())[1]


# -- the rendering patterns are matched against -------------------------------------------------------


def test_the_full_rendering_is_the_display_rendering_when_nothing_is_cut(data):
    for result in (data["age"].sum(), data[data["id"] == T]["age"].len(), (data["age"] * 2 + 1).moments()):
        assert render_full(result.node.map) == render_code(result.node.map) == task_of(result).signature


def test_the_full_rendering_keeps_long_constants_whole_and_the_signature_stays_short(data):
    result = data[data["id"].isin(LONG_IDS)]["age"].len()
    task = task_of(result)
    assert len(task.signature) <= MAX_CODE and not task.signature.endswith(".len()")  # cut for display
    assert task.full_signature == f"data[data['id'].isin({LONG_IDS!r})]['age'].len()"
    text = "x" * 5000
    assert task_of((data["dx"].astype("str") == text).sum()).full_signature == \
        f"(data['dx'].astype('str') == {text!r}).sum()"


def test_a_doubling_dag_is_not_written_out(data):
    task = task_of(doubled(data["age"], 60).len())
    assert task.full_signature is None  # 2 ** 60 copies would never finish: the renderer gives up on size
    assert len(task.signature) <= MAX_CODE  # the display text is still there, cut
    # a doubling that stays small is written in full
    assert render_full(doubled(data["age"], 6).len().node.map).count("data['age']") == 64


def test_a_long_chain_is_written_in_linear_time(data):
    x = data["age"]
    for i in range(5000):
        x = x + i
    text = task_of(x.sum()).full_signature
    assert text is not None and text.endswith(" + 4999).sum()") and text.startswith("(" * 5000 + "data['age']")


# -- filter and reject ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["*.len()", "*['age'].len()", "data[data['id'].isin(*)]*", "*, 199]*"])
def test_filter_patterns_see_what_a_long_constant_pushed_out_of_the_signature(data, pattern):
    result = data[data["id"].isin(LONG_IDS)]["age"].len()
    assert applies(result, filter=[pattern])
    assert not applies(result, filter=["*.sum()"])


def test_filter_patterns_see_past_a_long_string_constant(data):
    result = data[data["dx"].astype("str") != "x" * 1000]["age"].count()
    assert applies(result, filter=["*.count()"])
    assert applies(result, filter=["*['age'].count()"])
    assert not applies(result, filter=["*.len()"])


def test_reject_patterns_see_the_whole_task(data):
    honest = data[data["id"].isin(LONG_IDS)]["age"].len()
    assert not applies(honest, reject=["*.len()"])  # rejected as written: the policy does not apply
    assert applies(honest, reject=["*['id'].len()"])  # counts ages, not ids: the policy applies


def test_a_task_too_long_to_write_matches_every_filter_and_no_reject(data):
    blown = doubled(data["age"], 40).len()
    assert applies(blown, filter=["*.len()"])
    assert applies(blown, filter=["nothing like it"])
    assert applies(blown, reject=["*"])
    # the visible prefix would match the reject pattern: it must not exempt the task
    prefixed = doubled(data["id"], 40, method=True).len()
    assert task_of(prefixed).signature.startswith("data['id'].fillna(")
    assert applies(prefixed, reject=["data['id']*"])


def test_patterns_with_many_stars_take_linear_time_on_long_tasks(data):
    result = data[data["id"].isin(list(range(100_000)))]["age"].len()
    # a backtracking match of seven stars over this 600 KB text would not finish at all
    assert not applies(result, filter=["*a*a*a*a*a*a*z*"])
    assert applies(result, filter=["*[*, *, *, *]*len()"])


# -- Noise + Budget, end to end ---------------------------------------------------------------------------


def scoped_config(**scope) -> dict:
    return rt.config(noisy(**scope), rt.policy("Budget", epsilon=0.5))


def noise_applied(server: fm.Server) -> int:
    """How many results the (first) Noise policy has noised."""
    return next(p.applied for p in server.config.privacy if type(p.policy).__name__ == "Noise")


def test_a_long_constant_len_is_noised_and_charged_under_a_len_filter():
    frame = rt.cohort()
    server, data = rt.serve(scoped_config(filter=["*.len()"]), frame)
    data[data["id"].isin(LONG_IDS)]["age"].len().compute()
    assert noise_applied(server) == 1
    err = rt.suppressed(lambda: data["age"].len().compute(), "Budget", data)  # the first one was charged
    assert "budget exhausted" in err.message
    assert data["age"].sum().compute() == frame["age"].sum()  # out of scope: exact, free
    assert noise_applied(server) == 1


def test_a_doubling_dag_is_noised_and_charged_under_any_filter():
    frame = rt.cohort()
    server, data = rt.serve(scoped_config(filter=["data['y'].len()"], reject=["data['id']*"]), frame)
    assert data["age"].len().compute() == rt.N and noise_applied(server) == 0  # out of scope
    doubled(data["id"], 40, method=True).len().compute()
    assert noise_applied(server) == 1
    rt.suppressed(lambda: data["y"].len().compute(), "Budget", data)


def test_a_long_constant_len_is_noised_over_http(serve):
    frame = rt.cohort()
    server = fm.Server(config=scoped_config(filter=["*.len()"]))
    server["cohort"] = frame
    url = serve(server).url
    data = fm.FedData([fm.Remote(ip=url, fragment="cohort")], config=server.config)
    data[data["id"].isin(LONG_IDS)]["age"].len().compute()
    assert noise_applied(server) == 1
    with pytest.raises(fm.PrivacyError, match="budget exhausted"):
        data["y"].len().compute()
