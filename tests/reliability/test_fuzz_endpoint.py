"""Fuzzing ``POST /v1/evaluate``: whatever arrives, the answer is a typed msgpack body, never a 500.

Properties checked for every generated body:

- the status is never 500 (a 500 is tolerated only when it comes from a map
  value that cannot be encoded, which is re-derived and asserted);
- the body is msgpack: a map with an ``error`` (a typed error map) or
  ``results`` (one per output), and it contains no traceback text;
- the server answers the next valid request correctly afterwards.

Most examples go through ``server.app.test_client()`` (fast); a short run
goes through a real waitress server on loopback.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import fedmed as fm
from fedmed import wire
from fedmed.config import DEFAULT_CONFIG
from fedmed.errors import ERROR_TYPES
from fedmed.expr.rowwise import WIRE_NODES
from fedmed.serving import BackgroundServer

BODY_LIMIT = 10_000
RAW_CONFIG = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
CONFIG = {**RAW_CONFIG, "limits": {"max_body_bytes": BODY_LIMIT}}
ELEMENTWISE = sorted(k for k, v in RAW_CONFIG["methods"].items() if isinstance(v, str))
AGGREGATES = sorted(k for k, v in RAW_CONFIG["methods"].items() if isinstance(v, dict))

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # leave no .hypothesis directory behind
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

VALUES = [1.5, -2.0, 3.25, np.nan, 10.0, 0.0]
#: The answer to the canary request, per fragment ``v``: (sum, len).
CANARY = wire.pack({
    "protocol": 1,
    "nodes": [["fragment", ["v"], []], ["map", ["sum"], [0]], ["map", ["len"], [0]]],
    "outputs": [1, 2],
})


def make_server(config: Any = None) -> fm.Server:
    server = fm.Server(CONFIG if config is None else config)
    server["t"] = pd.DataFrame({
        "x": VALUES,
        "n": [1, 2, 3, 4, 5, 6],
        "s": ["a", "b", None, "a", "c", "b"],
        "b": [True, False, True, True, False, False],
    })
    server["v"] = pd.Series(VALUES)
    server["nested"] = {"a": [1, 2, 3], "b": {"c": [1.0, 2.0, None]}}
    return server


@pytest.fixture(scope="module")
def server() -> fm.Server:
    return make_server()


@pytest.fixture(scope="module")
def client(server: fm.Server):
    return server.app.test_client()


def check_answer(server: fm.Server, request_body: bytes, status: int, body: bytes) -> dict[str, Any]:
    """The properties every answer must have; returns the decoded body."""
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    if status == 500:
        # the one tolerated 500: a map value the wire cannot carry (re-derive it)
        try:
            response = server.evaluate(wire.unpack(request_body, max_bytes=BODY_LIMIT))
        except Exception as exc:
            pytest.fail(f"HTTP 500 not caused by an unencodable map value: {type(exc).__name__}: {exc}")
        with pytest.raises(TypeError):
            wire.pack(response)
    decoded = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert isinstance(decoded, dict), decoded
    assert decoded.get("protocol") == 1
    if "error" in decoded:
        error = decoded["error"]
        assert isinstance(error, dict) and error["type"] in ERROR_TYPES, error
        assert isinstance(error["message"], str)
        assert status == ERROR_TYPES[error["type"]].status or error["type"] == "ServerError", (status, error)
        assert status != 200
    else:
        results = decoded.get("results")
        assert isinstance(results, list), decoded
        for result in results:
            assert isinstance(result, dict) and ("value" in result or "error" in result), result
            if "error" in result:
                assert result["error"]["type"] in ERROR_TYPES
        request = msgpack.unpackb(request_body, raw=False, strict_map_key=False)
        assert len(results) == len(request["outputs"])
        assert status == 200 or all("error" in r for r in results), (status, results)
    return decoded


def check_canary(post) -> None:
    """The server still answers a valid request exactly."""
    status, body = post(CANARY)
    assert status == 200, body[:300]
    results = msgpack.unpackb(body, raw=False)["results"]
    assert results == [{"value": pytest.approx(np.nansum(VALUES))}, {"value": len(VALUES)}]


def via_test_client(client):
    def post(body: bytes) -> tuple[int, bytes]:
        reply = client.post(wire.ENDPOINT, data=body, content_type=wire.CONTENT_TYPE)
        return reply.status_code, reply.get_data()

    return post


# -- strategies -----------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=5),
    max_leaves=30,
)
literal_values = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.integers(-3, 3) | st.floats()
    | st.text(max_size=10) | st.sampled_from(["a", "b", "float", "int", "str", "bool"])
)
literals = literal_values | st.lists(literal_values, max_size=4)
valid_elementwise = st.sampled_from(ELEMENTWISE)
valid_aggregates = st.sampled_from(AGGREGATES)
random_names = st.text(max_size=8)
column_names = st.sampled_from(["x", "n", "s", "b", "a", "c", "nope", ""])
fragment_names = st.sampled_from(["t", "t", "t", "v", "v", "v", "nested", "missing"])
#: Valid kinds, weighted towards the ones that make trees grow; a few unknown ones.
KINDS = ["fragment"] * 2 + ["column"] * 3 + ["literal"] * 3 + ["elementwise"] * 4 + ["filter"] * 2 + ["map"] * 3
UNKNOWN_KINDS = ["Map", "param", "reduce", "apply", "", "FRAGMENT"]
#: How many children each kind takes (elementwise and map are variadic).
ARITY = {"fragment": (0, 0), "literal": (0, 0), "column": (1, 1), "filter": (2, 2), "elementwise": (1, 3), "map": (1, 3)}


def sometimes(draw, one_in: int) -> bool:
    """True about once in ``one_in`` draws (shrinks to False)."""
    return draw(st.sampled_from([False] * (one_in - 1) + [True]))


@st.composite
def params_for(draw, kind: str, broken: bool) -> list[Any]:
    if broken and sometimes(draw, 6):  # nonsense parameters: wrong count or types
        return draw(st.lists(literals | st.dictionaries(st.text(max_size=3), literal_values, max_size=2), max_size=3))
    if kind == "fragment":
        return [draw(random_names if broken and sometimes(draw, 4) else fragment_names)]
    if kind == "column":
        return [draw(literal_values if broken and sometimes(draw, 4) else column_names)]
    if kind == "literal":
        return [draw(literals)]
    if kind == "elementwise":
        return [draw(random_names if broken and sometimes(draw, 4) else valid_elementwise)]
    if kind == "map":
        return [draw(random_names if broken and sometimes(draw, 4) else valid_aggregates)]
    if kind == "filter":
        return []
    return draw(st.lists(literal_values, max_size=2))


@st.composite
def children_for(draw, kind: str, i: int, broken: bool) -> list[Any]:
    if broken and sometimes(draw, 6):  # invalid indices: forward, negative, booleans, floats
        return draw(st.lists(st.integers(-2, i + 2) | st.booleans() | st.floats(-1, 3), max_size=3))
    low, high = ARITY.get(kind, (0, 2))
    if broken and sometimes(draw, 4):
        low, high = 0, 3  # a wrong number of children, now and then
    if i == 0:
        return []
    return draw(st.lists(st.integers(0, i - 1), min_size=low, max_size=high))


@st.composite
def node_tables(draw) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    broken = sometimes(draw, 3)  # a third of the tables carry faults; the rest are well-formed
    nodes: list[Any] = []
    for i in range(n):
        if i == 0 and not sometimes(draw, 5):
            kind = "fragment"
        elif broken and sometimes(draw, 6):
            kind = draw(st.sampled_from(UNKNOWN_KINDS) | random_names)
        else:
            kind = draw(st.sampled_from(KINDS))
        entry: Any = [kind, draw(params_for(kind, broken)), draw(children_for(kind, i, broken))]
        if broken and sometimes(draw, 12):  # a malformed entry
            entry = draw(st.sampled_from([None, 3, "map", [], [kind], [kind, [], [], []], {"kind": kind}]))
        nodes.append(entry)
    maps = [i for i, e in enumerate(nodes) if isinstance(e, list) and e and e[0] == "map"]
    if maps and not (broken and sometimes(draw, 4)):
        outputs = draw(st.lists(st.sampled_from(maps), min_size=1, max_size=4))
    else:
        outputs = draw(st.lists(st.integers(-1, n) | st.booleans() | st.text(max_size=2), max_size=3))
    request: dict[str, Any] = {"protocol": 1, "nodes": nodes, "outputs": outputs}
    if broken and sometimes(draw, 6):
        request["protocol"] = draw(st.sampled_from([2, 0, None, "1", 1.0, True, [1]]))
    if broken and sometimes(draw, 12):
        del request[draw(st.sampled_from(["protocol", "nodes", "outputs"]))]
    return request


def pack(request: Any) -> bytes:
    return msgpack.packb(request, use_bin_type=True)


# -- properties -------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=2000))
def test_random_bytes(server, client, body):
    post = via_test_client(client)
    status, answer = post(body)
    check_answer(server, body, status, answer)
    check_canary(post)


@FUZZ
@given(value=msgpack_values)
def test_random_msgpack_structures(server, client, value):
    post = via_test_client(client)
    for body in (pack(value), pack({"protocol": 1, "nodes": value, "outputs": value})):
        if len(body) > BODY_LIMIT:
            continue
        status, answer = post(body)
        check_answer(server, body, status, answer)
    check_canary(post)


@settings(FUZZ, max_examples=200)
@given(request=node_tables())
def test_random_node_tables(server, client, request):
    post = via_test_client(client)
    body = pack(request)
    status, answer = post(body)
    decoded = check_answer(server, body, status, answer)
    if status == 200:
        assert set(decoded["versions"]) <= {"t", "v", "nested"}
        assert bool(decoded["versions"]) == bool(request["outputs"])
    check_canary(post)


@settings(FUZZ, max_examples=100)
@given(size=st.integers(BODY_LIMIT + 1, 5 * BODY_LIMIT), valid=st.booleans())
def test_oversized_bodies_get_413(server, client, size, valid):
    if valid:  # a well-formed request that is merely too long
        request = {"protocol": 1, "nodes": [["fragment", ["v"], []], ["literal", ["x" * size], []],
                                            ["map", ["count"], [0]]], "outputs": [2]}
        body = pack(request)
    else:
        body = b"\x00" * size
    post = via_test_client(client)
    status, answer = post(body)
    assert status == 413
    error = check_answer(server, body, status, answer)["error"]
    assert error["type"] == "RequestTooLarge" and str(BODY_LIMIT) in error["message"]
    check_canary(post)


def deep(depth: int, opener: bytes = b"\x91", leaf: bytes = b"\xc0") -> bytes:
    return opener * depth + leaf


@pytest.mark.parametrize(
    "body",
    [
        deep(10_000),  # 10,000 nested lists
        deep(10_000, opener=b"\x81\xa1a"),  # 10,000 nested maps
        deep(100_000, opener=b"\xdd\x00\x00\x00\x01"),  # array32 headers
        # a valid request whose literal is 10,000 lists deep
        wire.pack({"protocol": 1, "nodes": [["fragment", ["v"], []], ["literal", [7], []],
                                            ["map", ["count"], [0]]], "outputs": [2]}).replace(
            b"\x91\x07", b"\x91" + deep(10_000)
        ),
    ],
    ids=["lists", "maps", "array32", "literal"],
)
def test_deep_nesting_is_a_400(body):
    server = make_server(RAW_CONFIG)  # default body limit: the nesting, not the size, is refused
    post = via_test_client(server.app.test_client())
    status, answer = post(body)
    assert status == 400
    assert check_answer(server, body, status, answer)["error"]["type"] == "BadRequest"
    check_canary(post)


@pytest.mark.parametrize("depth, status", [(32, 200), (33, 400)])
def test_parameter_depth_limit(server, client, depth, status):
    value: Any = 1
    for _ in range(depth):
        value = [value]
    body = pack({"protocol": 1, "nodes": [["fragment", ["v"], []], ["literal", [value], []],
                                          ["map", ["count"], [0, 1]]], "outputs": [2]})
    got, answer = via_test_client(client)(body)
    # count takes no extra argument: at depth 32 the request is read and the task fails
    decoded = check_answer(server, body, got, answer)
    if status == 400:
        assert got == 400 and "nested too deeply" in decoded["error"]["message"]
    else:
        assert "results" in decoded


# -- the same properties over a real waitress server ------------------------------


@pytest.fixture(scope="module")
def running(server: fm.Server):
    background = BackgroundServer(server.app, threads=4)
    yield background
    background.stop()


@settings(FUZZ, max_examples=40)
@given(body=st.binary(max_size=500) | node_tables().map(pack))
def test_fuzz_over_waitress(server, running, body):
    session = requests.Session()

    def post(data: bytes) -> tuple[int, bytes]:
        reply = session.post(running.url + wire.ENDPOINT, data=data, timeout=10,
                             headers={"Content-Type": wire.CONTENT_TYPE})
        assert reply.headers["Content-Type"] == wire.CONTENT_TYPE
        return reply.status_code, reply.content

    status, answer = post(body)
    check_answer(server, body, status, answer)
    check_canary(post)
    session.close()


def test_oversized_chunked_body_over_waitress(server, running):
    """No Content-Length (chunked): the server still stops reading at the limit."""
    chunks = (b"\x00" * 4096 for _ in range(10))  # a generator makes requests send it chunked
    reply = requests.post(running.url + wire.ENDPOINT, data=chunks, timeout=10)
    assert "Content-Length" not in reply.request.headers
    assert reply.status_code == 413
    assert check_answer(server, b"", reply.status_code, reply.content)["error"]["type"] == "RequestTooLarge"

    def post(data: bytes) -> tuple[int, bytes]:
        answer = requests.post(running.url + wire.ENDPOINT, data=data, timeout=10)
        return answer.status_code, answer.content

    check_canary(post)
