"""Bearer-token authentication: hashed tokens, 401s, identities in the log, constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from unittest import mock

import msgpack
import pytest
import yaml

import fedmed as fm
from fedmed import wire
from fedmed.auth import digest
from fedmed.config import DEFAULT_CONFIG

RAW = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
SUM_LEN = wire.pack({"protocol": 1, "nodes": [["fragment", ["f"], []], ["map", ["sum"], [0]], ["map", ["len"], [0]]],
                     "outputs": [1, 2]})


def make_server(auth: dict[str, Any]) -> fm.Server:
    server = fm.Server({**RAW, "auth": auth})
    server["f"] = [1.0, 2.0, 3.0]
    return server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "fedmed.server"]


@pytest.fixture
def alice() -> fm.Server:
    return make_server({"tokens": {"alice": digest("s3cret")}})


def test_config_stores_only_the_digest(alice):
    assert digest("s3cret") == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in repr(alice.config.raw) and "s3cret" not in repr(vars(alice.config.auth))


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(""), {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"},
     bearer(digest("s3cret")), bearer("s3cret" + "x")],
    ids=["missing", "wrong", "empty", "no-scheme", "basic", "the-digest-itself", "longer"],
)
def test_missing_or_wrong_token_is_401(alice, headers):
    client = alice.app.test_client()
    for reply in (client.post(wire.ENDPOINT, data=SUM_LEN, headers=headers), client.get("/v1/info", headers=headers)):
        assert reply.status_code == 401
        error = msgpack.unpackb(reply.get_data())["error"]
        assert error["type"] == "Unauthorized" and "token" in error["message"]
    assert alice.traffic.requests == 0  # refused before any work


def test_right_token_works_and_the_log_names_alice(alice, caplog):
    client = alice.app.test_client()
    with caplog.at_level("INFO", logger="fedmed.server"):
        reply = client.post(wire.ENDPOINT, data=SUM_LEN, headers=bearer("s3cret"))
    assert reply.status_code == 200
    assert msgpack.unpackb(reply.get_data())["results"] == [{"value": 6.0}, {"value": 3}]
    (line,) = log_lines(caplog)
    assert line["client"] == "alice" and line["status"] == 200
    info = client.get("/v1/info", headers=bearer("s3cret"))
    assert info.status_code == 200 and msgpack.unpackb(info.get_data())["fragments"]["f"]["rows"] == 3


def test_remote_with_and_without_token(serve, alice, caplog):
    url = serve(alice).url
    with pytest.raises(fm.Unauthorized) as caught:
        fm.FedData([fm.Remote(url, "f")]).sum().compute()
    assert caught.value.server == url
    with pytest.raises(fm.Unauthorized):
        fm.FedData([fm.Remote(url, "f", token="wrong")]).sum().compute()
    with caplog.at_level("INFO", logger="fedmed.server"):
        assert fm.FedData([fm.Remote(url, "f", token="s3cret")]).sum().compute() == 6.0
    assert [line["client"] for line in log_lines(caplog)] == ["alice"]
    assert "s3cret" not in repr(fm.Remote(url, "f", token="s3cret"))  # not in reprs, plans or errors


def test_tokens_env_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FEDMED_TEST_TOKENS", f"bob:{digest('b0b')}, carol:{digest('car0l')}")
    server = make_server({"tokens": {"alice": digest("s3cret")}, "tokens_env": "FEDMED_TEST_TOKENS"})
    client = server.app.test_client()
    for token in ("s3cret", "b0b", "car0l"):
        assert client.post(wire.ENDPOINT, data=SUM_LEN, headers=bearer(token)).status_code == 200
    assert client.post(wire.ENDPOINT, data=SUM_LEN, headers=bearer("nobody")).status_code == 401
    assert server.config.auth.identify("Bearer car0l") == "carol"


def test_tokens_env_alone(monkeypatch):
    monkeypatch.setenv("FEDMED_TEST_TOKENS", f"dave:{digest('d4ve')}")
    server = make_server({"tokens_env": "FEDMED_TEST_TOKENS"})
    assert server.app.test_client().get("/v1/info", headers=bearer("d4ve")).status_code == 200
    monkeypatch.delenv("FEDMED_TEST_TOKENS")
    with pytest.raises(fm.ConfigError, match="no tokens"):  # an empty variable locks no one in
        make_server({"tokens_env": "FEDMED_TEST_TOKENS"})


@pytest.mark.parametrize("bad", ["s3cret", digest("s3cret").upper(), digest("s3cret")[:-1], 42])
def test_plain_or_malformed_digests_are_refused_at_load_time(bad):
    with pytest.raises(fm.ConfigError, match="SHA-256"):
        make_server({"tokens": {"alice": bad}})


@pytest.mark.parametrize("token, name", [("t-one", "one"), ("t-two", "two"), ("t-three", "three"), ("nope", None)])
def test_every_known_digest_is_compared_even_after_a_match(token, name):
    tokens = {"one": digest("t-one"), "two": digest("t-two"), "three": digest("t-three")}
    server = make_server({"tokens": tokens})
    known = {bytes.fromhex(d) for d in tokens.values()}
    with mock.patch("fedmed.auth.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        reply = server.app.test_client().post(wire.ENDPOINT, data=SUM_LEN, headers=bearer(token))
    assert reply.status_code == (200 if name else 401)
    presented = hashlib.sha256(token.encode()).digest()
    calls = [c.args for c in compare.call_args_list]
    assert len(calls) == len(tokens)  # no early exit, whichever token matched
    assert {a for a, _ in calls} == {presented} and {b for _, b in calls} == known
    assert server.config.auth.identify(f"Bearer {token}") == name
