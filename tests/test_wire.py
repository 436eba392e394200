"""The wire protocol: round trips keep keys; malformed tables are refused with a reason."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, strategies as st

import fedmed as fm
from fedmed import wire
from fedmed.expr.optimize import bind
from fedmed.expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map

OPS = ["add", "sub", "mul", "gt", "eq"]
literals = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.booleans(), st.text(max_size=5), st.none())


@st.composite
def rowwise(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.one_of(st.just(Column(Fragment("f"), "x")), literals.map(Literal)))
    kind = draw(st.sampled_from(["elementwise", "filter", "column"]))
    left = draw(rowwise(depth=depth - 1))
    if kind == "filter":
        return Filter(left, draw(rowwise(depth=depth - 1)))
    if kind == "column":
        return Column(left, draw(st.sampled_from(["x", "y"])))
    return Elementwise(draw(st.sampled_from(OPS)), (left, draw(rowwise(depth=depth - 1))))


@given(st.lists(rowwise(), min_size=1, max_size=4))
def test_round_trip_keeps_keys(exprs):
    maps = [Map("sum", (e,)) for e in exprs]
    table = wire.encode_table(maps)
    nodes, outputs = wire.decode_table(wire.unpack(wire.pack(table.request())))
    assert [nodes[o].key for o in outputs] == [m.key for m in maps]
    assert len({n.key for n in nodes}) == len(nodes)  # every subtree sent once


def test_shared_subtrees_are_one_entry():
    column = Column(Fragment("f"), "x")
    maps = [Map("sum", (column,)), Map("len", (column,)), Map("sum", (Column(Fragment("f"), "x"),))]
    table = wire.encode_table(maps)
    assert len(table.nodes) == 4  # fragment, column, sum, len
    assert table.outputs[0] == table.outputs[2]


@pytest.mark.parametrize(
    "request_, reason",
    [
        ([1, 2], "must be a msgpack map"),
        ({"protocol": 99, "nodes": [], "outputs": []}, "protocol version 99 is not supported"),
        ({"protocol": True, "nodes": [], "outputs": []}, "protocol version True is not supported"),
        ({"protocol": 1, "nodes": [["fragment", ["f"], []], ["column", [None], [0]]], "outputs": []}, "must be a string"),
        ({"protocol": 1, "nodes": [["eval", [], []]], "outputs": []}, "unknown node kind 'eval'"),
        ({"protocol": 1, "nodes": [["fragment", ["f"], [0]]], "outputs": []}, "children must be indices of earlier nodes"),
        ({"protocol": 1, "nodes": [["fragment", ["f", 2], []]], "outputs": []}, "expected 1 parameter"),
        ({"protocol": 1, "nodes": [["literal", [{"a": 1}], []]], "outputs": []}, "parameters must be"),
        ({"protocol": 1, "nodes": [["fragment", ["f"], []], ["column", [3], [0]]], "outputs": []}, "must be a string"),
        ({"protocol": 1, "nodes": [["fragment", ["f"], []], ["filter", [], [0]]], "outputs": []}, "expected 2 children"),
        ({"protocol": 1, "nodes": [["fragment", ["f"], []]], "outputs": [0]}, "not the index of a map node"),
    ],
)
def test_malformed_tables_are_refused(request_, reason):
    with pytest.raises(fm.BadRequest, match=reason):
        wire.decode_table(request_)


def test_server_answers_malformed_bodies_with_400_and_stays_up():
    server = fm.Server()
    server["f"] = [1, 2]
    for body in (b"\xc1", b"", wire.pack({"protocol": 1})):
        status, answer = server.handle(body)
        assert status == 400
        assert wire.unpack(answer)["error"]["type"] == "BadRequest"
    good = wire.encode_table([bind(Map("sum", (Fragment(),)), "f")]).request()
    status, answer = server.handle(wire.pack(good))
    assert status == 200 and wire.unpack(answer)["results"] == [{"value": 3}]


def test_a_result_that_cannot_be_encoded_is_a_500_in_msgpack():
    # (dates travel now, as {"$datetime": iso}: a Decimal, which no map should release, does not)
    from decimal import Decimal

    server = fm.Server()
    server["when"] = {"t": [Decimal("1.5"), Decimal("2.5")]}
    task = wire.encode_table([bind(Map("min", (Column(Fragment(), "t"),)), "when")]).request()
    status, answer = server.handle(wire.pack(task))
    assert status == 500
    assert wire.unpack(answer)["error"] == {
        "type": "ServerError", "message": "internal server error (see the server's log)",
        "fragment": None, "operation": None, "policy": None,
    }


def test_mixing_fragments_in_one_expression_is_refused():
    server = fm.Server()
    server["a"], server["b"] = [1], [2]
    both = Map("sum", (Elementwise("add", (Fragment("a"), Fragment("b"))),))
    status, answer = server.handle(wire.pack(wire.encode_table([both]).request()))
    assert status == 400 and "different fragments" in wire.unpack(answer)["error"]["message"]


def test_numpy_values_travel_as_plain_numbers():
    import numpy as np

    assert wire.unpack(wire.pack({"a": np.float64(1.5), "b": np.arange(3), "c": np.int32(2)})) == {
        "a": 1.5, "b": [0, 1, 2], "c": 2
    }


def test_a_round_is_encoded_once_and_each_server_gets_its_fragment_name(monkeypatch):
    from fedmed.expr.optimize import OptFlags, make_plan, plan_requests

    servers = [fm.Server() for _ in range(4)]
    sources = [fm.Simulation(s, f"site {i}") for i, s in enumerate(servers)]
    sources.append(fm.Simulation(servers[0], "site 0, second part"))  # two fragments on one server
    data = fm.FedData(sources)
    result = fm.stats.describe((data["x"] * 2 + 1)[data["g"] == 1])
    requests = plan_requests(make_plan([result.node]).rounds[0], OptFlags())
    built = []
    encode_table = wire.encode_table
    monkeypatch.setattr(wire, "encode_table", lambda maps, **kw: built.append(maps) or encode_table(maps, **kw))
    encoder = wire.Encoder()
    tables = [encoder.encode(r.tasks) for r in requests]
    monkeypatch.undo()
    # the same tables as binding every map to its fragment, built twice: once shared, once for the two-part server
    assert tables == [wire.encode_table([t.map for t in r.tasks]) for r in requests]
    assert len(built) == 2
    names = [[e[1] for e in t.nodes if e[0] == "fragment"] for t in tables]
    assert names == [[["site 0"], ["site 0, second part"]], [["site 1"]], [["site 2"]], [["site 3"]]]
