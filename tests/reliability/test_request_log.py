"""One JSON line per request on the ``fedmed.server`` logger, and never a data value in it."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgpack
import pandas as pd
import pytest
import yaml

import fedmed as fm
from fedmed import wire
from fedmed.auth import digest
from fedmed.config import DEFAULT_CONFIG
from fedmed.server import http

RAW = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
SECRET = 987654.321
SECRET_TEXTS = ("987654", "9.87654", "987,654", "Bob Secretname")
#: Keys every line of an evaluated request has (more may follow, e.g. "signatures").
KEYS = {"client", "fragments", "operations", "rows", "outcomes", "status", "ms"}


def make_server(config: dict[str, Any] | None = None) -> fm.Server:
    server = fm.Server({**RAW, **(config or {})})
    server["cohort"] = pd.DataFrame({
        "income": [SECRET, 10.0, 20.0, 30.0, None],
        "name": ["Bob Secretname", "a", "b", "c", "d"],
        "age": [40, 50, 60, 70, 80],
    })
    return server


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fedmed.server"]


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = []
    for record in records(caplog):
        try:
            lines.append(json.loads(record.getMessage()))
        except ValueError:
            continue
    return lines


def assert_no_data(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "".join(str(r.__dict__) for r in records(caplog))
    for secret in SECRET_TEXTS:
        assert secret not in text, secret


def test_one_line_per_request_with_every_key_and_no_values(serve, caplog):
    server = make_server()
    url = serve(server).url
    data = fm.FedData([fm.Remote(url, "cohort")])
    income = data["income"]
    queries = [
        lambda: fm.compute(income.sum(), income.max(), income.min(), income.len()),
        lambda: fm.stats.describe(income).compute(),
        lambda: data["name"].set().compute(),
        lambda: data["name"].value_counts().compute(),
        lambda: data[data["age"] > 45]["income"].sum().compute(),
        lambda: ((income - fm.stats.mean(income)) ** 2).sum().compute(),  # two rounds: two requests
    ]
    with caplog.at_level("INFO", logger="fedmed.server"):
        for query in queries:
            query()
    assert server.traffic.requests == 7
    lines = json_lines(caplog)
    assert len(lines) == len(records(caplog)) == 7  # exactly one line per request, all JSON
    for line in lines:
        assert set(line) >= KEYS
        assert line["client"] == "127.0.0.1"
        assert line["fragments"] == {"cohort": 1}
        assert line["rows"] == 5 and line["status"] == 200
        assert isinstance(line["ms"], (int, float)) and line["ms"] >= 0
        assert sum(line["outcomes"].values()) >= 1 and set(line["outcomes"]) == {"ok"}
        assert line["operations"] == sorted(line["operations"]) and line["operations"]
    assert lines[0]["operations"] == ["len", "max", "min", "sum"] and lines[0]["outcomes"] == {"ok": 4}
    assert_no_data(caplog)


def evaluate(client: Any, nodes: list[Any], outputs: list[int], headers: dict[str, str] | None = None) -> int:
    body = wire.pack({"protocol": 1, "nodes": nodes, "outputs": outputs})
    return client.post(wire.ENDPOINT, data=body, headers=headers or {}).status_code


FRAGMENT = ["fragment", ["cohort"], []]


@pytest.mark.parametrize(
    "nodes, outputs, status, outcomes",
    [
        ([FRAGMENT, ["column", ["income"], [0]], ["map", ["sum"], [1]], ["column", ["nope"], [0]],
          ["map", ["sum"], [3]]], [2, 4], 200, {"ok": 1, "TaskFailed": 1}),
        ([FRAGMENT, ["column", ["nope"], [0]], ["map", ["sum"], [1]]], [2], 422, {"TaskFailed": 1}),
        # a client literal equal to the secret
        ([FRAGMENT, ["column", ["income"], [0]], ["literal", [SECRET], []], ["elementwise", ["eq"], [1, 2]],
          ["map", ["sum"], [3]]], [4], 200, {"ok": 1}),
    ],
    ids=["partial failure", "all failed", "secret literal"],
)
def test_outcomes_are_counted_without_values(caplog, nodes, outputs, status, outcomes):
    server = make_server()
    with caplog.at_level("INFO", logger="fedmed.server"):
        assert evaluate(server.app.test_client(), nodes, outputs) == status
    (line,) = json_lines(caplog)
    assert set(line) >= KEYS and line["status"] == status and line["outcomes"] == outcomes
    # (a literal the client itself sent may be echoed in "signatures": that is what was asked)
    assert line["rows"] == 5 and line["fragments"] == {"cohort": 1}


def test_policy_refusals_are_counted_by_policy(caplog):
    server = make_server({"privacy": [{"policy": "fedmed.privacy.Anonymity", "params": {"k": 10}}]})
    with caplog.at_level("INFO", logger="fedmed.server"):
        evaluate(server.app.test_client(), [FRAGMENT, ["column", ["income"], [0]], ["map", ["sum"], [1]]], [2])
    (line,) = json_lines(caplog)
    assert line["status"] == 403
    (label,) = line["outcomes"]
    assert label.startswith("PrivacyError:") and "Anonymity" in label
    assert_no_data(caplog)


@pytest.mark.parametrize(
    "nodes, outputs, status",
    [
        ("garbage", [], 400),
        ([FRAGMENT, ["map", ["median"], [0]]], [1], 403),
        ([["fragment", ["nope"], []], ["map", ["sum"], [0]]], [1], 404),
    ],
    ids=["400", "403", "404"],
)
def test_request_level_errors_are_logged_once(caplog, nodes, outputs, status):
    server = make_server({"methods": {k: v for k, v in RAW["methods"].items()}})
    with caplog.at_level("INFO", logger="fedmed.server"):
        assert evaluate(server.app.test_client(), nodes, outputs) == status
    (line,) = json_lines(caplog)
    assert line["status"] == status and line["client"] and isinstance(line["ms"], (int, float))
    assert len(records(caplog)) == 1


def test_internal_error_logs_the_traceback_but_no_value(caplog):
    server = fm.Server({"methods": {"leak": {"map": "builtins.iter", "reduce": "builtins.list"}}})
    server["cohort"] = [SECRET, 1.0]
    with caplog.at_level("INFO", logger="fedmed.server"):
        assert evaluate(server.app.test_client(), [FRAGMENT, ["map", ["leak"], [0]]], [1]) == 500
    (line,) = json_lines(caplog)
    assert line["status"] == 500
    assert_no_data(caplog)


@pytest.mark.parametrize("case", ["no token", "wrong token", "too large"])
def test_requests_refused_before_evaluation_are_logged_too(caplog, case):
    """A 401 or 413 is a request too: an audit log must show refused attempts (and who made them).
    Fault: the HTTP layer refuses them before ``Server.handle``, which alone writes the line."""
    server = make_server({"auth": {"tokens": {"alice": digest("s3cret")}}, "limits": {"max_body_bytes": 1000}})
    client = server.app.test_client()
    headers = {"no token": {}, "wrong token": {"Authorization": "Bearer guess"},
               "too large": {"Authorization": "Bearer s3cret"}}[case]
    literal = ["literal", ["x" * 2000 if case == "too large" else "x"], []]
    with caplog.at_level("INFO", logger="fedmed.server"):
        status = evaluate(client, [FRAGMENT, literal, ["map", ["len"], [0]]], [2], headers)
    assert status == (413 if case == "too large" else 401)
    lines = json_lines(caplog)
    assert len(lines) == 1, f"{len(lines)} log lines for a refused request ({status})"
    assert lines[0]["status"] == status


def test_values_released_in_round_one_stay_out_of_the_log(serve, caplog):
    """A round-2 literal is a value computed from the data (here the maximum: one patient's exact
    income). Fault: the log line's ``signatures`` render it, so the data value lands in the log."""
    server = make_server()
    income = fm.FedData([fm.Remote(serve(server).url, "cohort")])["income"]
    with caplog.at_level("INFO", logger="fedmed.server"):
        assert (income == income.max()).sum().compute() == 1
    assert len(json_lines(caplog)) == 2
    assert_no_data(caplog)


def test_status_page_does_not_show_one_clients_values_to_another():
    """Same value, other channel. Fault: ``GET /`` lists recent signatures to any token holder, so
    bob reads the maximum income that alice's round 2 carried (and every literal alice sent)."""
    server = make_server({"auth": {"tokens": {"alice": digest("a"), "bob": digest("b")}}})
    client = server.app.test_client()
    as_alice = {"Authorization": "Bearer a"}

    def ask(nodes: list[Any]) -> Any:
        body = wire.pack({"protocol": 1, "nodes": nodes, "outputs": [len(nodes) - 1]})
        reply = client.post(wire.ENDPOINT, data=body, headers=as_alice)
        assert reply.status_code == 200
        return msgpack.unpackb(reply.get_data())["results"][0]["value"]

    income = [FRAGMENT, ["column", ["income"], [0]]]
    top = ask(income + [["map", ["max"], [1]]])  # round 1: the maximum is released to alice
    assert ask(income + [["literal", [top], []], ["elementwise", ["eq"], [1, 2]], ["map", ["sum"], [3]]]) == 1
    page = client.get("/", headers={"Authorization": "Bearer b"})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    for secret in SECRET_TEXTS:
        assert secret not in text, secret


def test_failed_tokens_are_logged_once_per_address_and_interval_with_a_count(caplog):
    """An audit trail of failed token attempts that a flood of guesses cannot turn into a full disk:
    one line per client address per interval, then a line counting the attempts in between."""
    server = make_server({"auth": {"tokens": {"alice": digest("s3cret")}}})
    refusals = server.app.extensions["fedmed.refusals"]
    now = [1000.0]
    refusals.clock = lambda: now[0]
    client = server.app.test_client()
    guesses = [f"guess-{i}" for i in range(50)]

    def attempt(token: str, address: str = "10.0.0.7") -> int:
        return client.get("/v1/info", headers={"Authorization": f"Bearer {token}"},
                          environ_base={"REMOTE_ADDR": address}).status_code

    with caplog.at_level("INFO", logger="fedmed.server"):
        assert {attempt(token) for token in guesses} == {401}
        assert attempt("other", "10.0.0.8") == 401  # another address has its own line
        assert [(line["client"], line.get("suppressed")) for line in json_lines(caplog)] == [
            ("10.0.0.7", None), ("10.0.0.8", None)]
        now[0] += http.REFUSALS_LOGGED_EVERY
        assert attempt("late") == 401
        lines = json_lines(caplog)
        assert lines[-1] == {"client": "10.0.0.7", "path": "/v1/info", "status": 401, "error": "Unauthorized",
                             "suppressed": 49}
        now[0] += 2 * http.REFUSALS_LOGGED_EVERY
        for _ in range(3):
            attempt("again", "10.0.0.8")
        now[0] += http.REFUSALS_LOGGED_EVERY  # 10.0.0.8 falls quiet: its count is written when the next
        attempt("third", "10.0.0.9")         # refused attempt from anywhere sweeps it out
    lines = json_lines(caplog)
    assert [(line["client"], line.get("suppressed")) for line in lines[3:]] == [
        ("10.0.0.8", None), ("10.0.0.9", None), ("10.0.0.8", 2)]
    assert len(refusals._seen) == 1  # quiet addresses are forgotten
    text = caplog.text
    assert not any(token in text for token in [*guesses, "late", "again", "third", "s3cret"])  # never a token
    assert attempt("s3cret") == 200 and server.traffic.requests == 0  # /v1/info is not a protocol request
