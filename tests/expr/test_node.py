"""Nodes: structural equality, content keys, iterative walks."""

from __future__ import annotations

import sys

import fedmed as fm
from fedmed.expr.node import render_code, walk
from fedmed.expr.rowwise import Column, Elementwise, Fragment, Literal, Map


def build():
    return Map("sum", (Elementwise("add", (Column(Fragment(), "age"), Literal(1))),))


def test_equal_builds_have_equal_keys_and_compare_equal():
    a, b = build(), build()
    assert a is not b
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


def test_keys_differ_on_any_difference():
    base = build()
    others = [
        Map("max", base.args),
        Map("sum", (Elementwise("add", (Column(Fragment(), "bmi"), Literal(1))),)),
        Map("sum", (Elementwise("add", (Column(Fragment(), "age"), Literal(1.0))),)),  # int vs float
        Map("sum", (Elementwise("add", (Column(Fragment(), "age"), Literal(True))),)),
        Map("sum", (Elementwise("add", (Column(Fragment("frag"), "age"), Literal(1))),)),
    ]
    assert len({base.key, *(o.key for o in others)}) == 1 + len(others)


def test_walk_yields_children_first_and_each_object_once():
    column = Column(Fragment(), "x")
    root = Elementwise("add", (column, column))
    order = list(walk([root]))
    assert order == [order[0], column, root]
    assert isinstance(order[0], Fragment)


def test_deep_expressions_need_no_recursion():
    data = fm.FedData([fm.Local([1.0, 2.0])])
    expr = data
    for _ in range(3 * sys.getrecursionlimit()):
        expr = expr + 1
    total = expr.sum()
    assert total.node.key  # computed iteratively
    assert total.compute() == 3.0 + 2 * 3 * sys.getrecursionlimit()


def test_code_reads_like_the_user_code():
    data = fm.FedData([fm.Local({"age": [1]})])
    assert render_code((data[data["age"] > 50]["age"] * 2).sum().node.map) == "(data[(data['age'] > 50)]['age'] * 2).sum()"
