"""explain(): pinned plans (nothing is sent while explaining)."""

from __future__ import annotations

import fedmed as fm

SOURCES = [
    fm.Remote(ip="http://127.0.0.1:5000", fragment="test array 1/2"),
    fm.Remote(ip="http://127.0.0.1:5001", fragment="test array 2/2"),
]

QUICKSTART = """\
FedPlan · 1 output · 2 servers · 1 round · 2 requests
passes: dedupe_nodes, batch_requests, split_rounds
round 1 · 2 requests
  m0 := fragment
  m1 := sum(m0)
  m2 := len(m0)
  http://127.0.0.1:5000 ['test array 1/2']: send m1, m2
  http://127.0.0.1:5001 ['test array 2/2']: send m1, m2
client
  r0 := sum.reduce(m1) over 2 sources
  r1 := len.reduce(m2) over 2 sources
  r2 := r0 / r1
  return r2"""

TWO_ROUNDS = """\
FedPlan · 2 outputs · 2 servers · 2 rounds · 4 requests
passes: dedupe_nodes, batch_requests, split_rounds
round 1 · 2 requests
  m0 := fragment
  m1 := m0['age']
  m2 := sum(m1)
  m3 := len(m1)
  http://127.0.0.1:5000 ['test array 1/2']: send m2, m3
  http://127.0.0.1:5001 ['test array 2/2']: send m2, m3
round 2 · 2 requests
  m4 := param(r2)
  m5 := m1 - m4
  m6 := 2
  m7 := m5 ** m6
  m8 := sum(m7)
  http://127.0.0.1:5000 ['test array 1/2']: send m8
  http://127.0.0.1:5001 ['test array 2/2']: send m8
client
  r0 := sum.reduce(m2) over 2 sources
  r1 := len.reduce(m3) over 2 sources
  r2 := r0 / r1
  r3 := sum.reduce(m8) over 2 sources
  return r2, r3"""

NAIVE = """\
FedPlan · 2 outputs · 2 servers · 1 round · 6 requests
passes: split_rounds
round 1 · 6 requests
  m0 := fragment
  m1 := sum(m0)
  m2 := sum(m0)
  m3 := len(m0)
  http://127.0.0.1:5000 ['test array 1/2']: send m1
  http://127.0.0.1:5001 ['test array 2/2']: send m1
  http://127.0.0.1:5000 ['test array 1/2']: send m2
  http://127.0.0.1:5001 ['test array 2/2']: send m2
  http://127.0.0.1:5000 ['test array 1/2']: send m3
  http://127.0.0.1:5001 ['test array 2/2']: send m3
client
  r0 := sum.reduce(m1) over 2 sources
  r1 := sum.reduce(m2) over 2 sources
  r2 := len.reduce(m3) over 2 sources
  r3 := r1 / r2
  return r0, r3"""


def test_quickstart_plan():
    data = fm.FedData(SOURCES)
    assert (data.sum() / data.len()).explain() == QUICKSTART


def test_staged_plan_names_each_value_once():
    age = fm.FedData(SOURCES)["age"]
    mean = age.sum() / age.len()
    assert fm.explain(mean, ((age - mean) ** 2).sum()) == TWO_ROUNDS


def test_naive_plan_has_a_request_per_map_task_and_no_merging():
    data = fm.FedData(SOURCES, optimize=False)
    assert fm.explain(data.sum(), data.sum() / data.len()) == NAIVE
