"""Regression tests for faults found while fuzzing and load-testing the server.

Each test is small, deterministic and bounded (at most a few hundred MB of
work when the fault is present); each states the fault in its docstring.

- an operand-less ``elementwise`` (or ``map``) node makes the server answer 500;
- rendering a task's readable signature expands shared subexpressions, so a
  request of a few hundred bytes costs 2**k time and memory (now on every
  request: the log line carries the signatures) and a failed task's error
  echoes the whole expansion;
- ``add`` concatenates constant strings and lists, so reusing one node
  doubles its size at each level ("bounded elementwise work" misses it);
- a ``map`` may repeat one child without limit, so ``comoment_matrix`` over
  one column repeated k times answers a k x k matrix: a 1 kB request gets a
  9 MB answer, a 20 kB request (20,000 children, within every limit) would
  need tens of GB;
- ``BackgroundServer.stop()`` is not idempotent (``with`` plus ``stop()`` raises).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, Callable

import msgpack
import pytest

import fedmed as fm
from fedmed import wire
from fedmed.errors import ERROR_TYPES
from fedmed.serving import BackgroundServer

#: What one small request may cost the server. Ordinary requests here peak well under 1 MB.
PEAK_BYTES = 16 * 1024 * 1024
ANSWER_BYTES = 64 * 1024


@pytest.fixture
def server() -> fm.Server:
    server = fm.Server()
    server["v"] = [1.0, 2.0, 3.0]
    server["s"] = ["a", "b", "c"]
    return server


def body_of(nodes: list[Any], outputs: list[int]) -> bytes:
    return wire.pack({"protocol": 1, "nodes": nodes, "outputs": outputs})


def measured(fn: Callable[[], Any]) -> tuple[Any, int, float]:
    """``fn()``, its peak traced memory (Python and numpy allocations) and its duration."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1], time.perf_counter() - started
    finally:
        tracemalloc.stop()


def assert_typed_answer(status: int, answer: bytes) -> dict[str, Any]:
    assert status != 500, msgpack.unpackb(answer)
    decoded = msgpack.unpackb(answer, raw=False)
    assert "results" in decoded or decoded["error"]["type"] in ERROR_TYPES
    return decoded


def doubling(leaf: list[Any], levels: int) -> list[list[Any]]:
    """``leaf``, then ``levels`` nodes each adding the previous node to itself (a chain of shared subtrees)."""
    return [leaf] + [["elementwise", ["add"], [i, i]] for i in range(levels)]


# -- 1. operand-less nodes: HTTP 500 ------------------------------------------------------


@pytest.mark.parametrize(
    "nodes",
    [
        # found by test_fuzz_endpoint: elementwise with no operands (the protocol allows 0 or more)
        [["fragment", ["v"], []], ["elementwise", ["abs"], []], ["elementwise", ["add"], [0, 1]], ["map", ["sum"], [2]]],
        # a map with no arguments used inside another expression
        [["fragment", ["v"], []], ["map", ["sum"], []], ["elementwise", ["add"], [0, 1]], ["map", ["sum"], [2]]],
    ],
    ids=["elementwise", "map"],
)
def test_operandless_node_is_not_a_500(server, nodes):
    """Fault: the task fails (``abs()`` takes one argument), and rendering its signature for the
    error (``Elementwise.code``/``Map.code`` read ``args[0]``) raises IndexError -> HTTP 500."""
    status, answer = server.handle(body_of(nodes, [3]))
    decoded = assert_typed_answer(status, answer)
    # refused when the table is checked: an operation needs at least one operand
    assert status == 400 and decoded["error"]["type"] == "BadRequest"
    assert "at least one operand" in decoded["error"]["message"]
    # and over HTTP the same
    reply = server.app.test_client().post(wire.ENDPOINT, data=body_of(nodes, [3]))
    assert reply.status_code != 500


# -- 2. exponential rendering of shared subexpressions -------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["ok task", "failed task"])
def test_shared_subexpressions_cost_linear_work(server, fails):
    """Fault: ``render_code`` expands a DAG into a tree. 22 levels of ``x = x + x`` (a 500-byte
    request) render to a 37 MB string; each further level doubles it (30 levels: ~10 GB, then
    MemoryError -> 500 or the OOM killer). The log line renders every task's signature, so even a
    successful request pays; a failed task also sends the whole rendering back as ``operation``."""
    levels = 22
    nodes = doubling(["fragment", ["v"], []], levels)
    if fails:
        nodes += [["column", ["nope"], [levels]], ["map", ["sum"], [levels + 1]]]
    else:
        nodes += [["map", ["sum"], [levels]]]
    body = body_of(nodes, [len(nodes) - 1])
    assert len(body) < 1000
    (status, answer), peak, _ = measured(lambda: server.handle(body))
    decoded = assert_typed_answer(status, answer)
    if not fails:
        assert decoded["results"] == [{"value": 6.0 * 2**levels}]
    assert len(answer) < ANSWER_BYTES, f"a {len(body)}-byte request got a {len(answer):,}-byte answer"
    assert peak < PEAK_BYTES, f"a {len(body)}-byte request peaked at {peak / 2**20:.0f} MiB"


# -- 3. exponential growth of constants through `add` ---------------------------------------


@pytest.mark.parametrize(
    "leaf, levels, tail",
    [
        # a 1 kB string doubled 16 times: a 64 MB constant compared with a text column
        (["literal", ["x" * 1000], []], 16,
         lambda k: [["fragment", ["s"], []], ["elementwise", ["eq"], [k + 1, k]], ["map", ["sum"], [k + 2]]]),
        # a 1,000-element list doubled 11 times: 2 million thresholds
        (["literal", [[0] * 1000], []], 11,
         lambda k: [["fragment", ["v"], []], ["map", ["count_below"], [k + 1, k]]]),
    ],
    ids=["string", "list"],
)
def test_constants_cannot_grow_exponentially(server, leaf, levels, tail):
    """Fault: ``_bounded`` refuses repeating text (``"x" * n``) but not ``add``: constant strings and
    lists concatenate, so each reuse doubles them. Measured in the fragment's evaluator alone (the
    rendering fault above is a separate one)."""
    nodes = doubling(leaf, levels) + tail(levels)
    request = {"protocol": 1, "nodes": nodes, "outputs": [len(nodes) - 1]}
    assert len(wire.pack(request)) < 8000
    decoded, outputs = wire.decode_table(request)
    fragment = server["s" if nodes[levels + 1][1] == ["s"] else "v"]
    _, peak, _ = measured(lambda: list(fragment.evaluate(decoded, outputs, server.config)))
    assert peak < PEAK_BYTES, f"evaluating a {len(wire.pack(request))}-byte request peaked at {peak / 2**20:.0f} MiB"


# -- 4. quadratic answers from repeated children ---------------------------------------------


def test_repeated_children_cannot_make_a_huge_answer(server):
    """Fault: nothing bounds a map's argument count (only nodes and bytes are limited), and
    ``comoment_matrix`` returns a k x k matrix: one column repeated 1,000 times (a 1 kB request)
    gets a 9 MB answer; 20,000 repeats (20 kB) would need ~3 GB of floats and ~13 GB as Python lists."""
    body = body_of([["fragment", ["v"], []], ["map", ["comoment_matrix"], [0] * 1000]], [1])
    assert len(body) < 1100
    (status, answer), peak, _ = measured(lambda: server.handle(body))
    assert_typed_answer(status, answer)
    assert len(answer) < 1024 * 1024, f"a {len(body)}-byte request got a {len(answer):,}-byte answer"
    assert peak < PEAK_BYTES, f"a {len(body)}-byte request peaked at {peak / 2**20:.0f} MiB"


# -- 5. the test harness itself -----------------------------------------------------------------


def test_background_server_stop_is_idempotent(server):
    """Fault: a second ``stop()`` (for example ``with BackgroundServer(app) as s: ... s.stop()``)
    pulls the trigger of a closed loop: OSError [Errno 9] Bad file descriptor."""
    with BackgroundServer(server.app) as running:
        assert fm.FedData([fm.Remote(running.url, "v")]).sum().compute() == 6.0
        running.stop()
