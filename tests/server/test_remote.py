"""The quickstart and its guarantees, over real waitress servers on loopback."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import fedmed as fm
from fedmed.backend import remote


def requests_per_server(servers: list[fm.Server]) -> list[int]:
    return [s.traffic.requests for s in servers]


def test_quickstart_mean_is_exact_with_one_request_per_server(quickstart):
    servers, sources = quickstart
    data = fm.FedData(sources, config="example/config-exact.yaml")
    mean = data.sum() / data.len()
    assert requests_per_server(servers) == [0, 0]  # lazy: nothing sent yet
    assert mean.compute() == 3.0
    assert requests_per_server(servers) == [1, 1]
    assert "Mean 3.0" == f"Mean {mean}"


def test_compute_batches_and_dedupes_shared_work(quickstart):
    servers, sources = quickstart
    data = fm.FedData(sources)
    total, n, mean = fm.compute(data.sum(), data.len(), data.sum() / data.len())
    assert (total, n, mean) == (15, 5, 3.0)
    assert requests_per_server(servers) == [1, 1]


def test_identical_subtrees_are_sent_once(quickstart):
    servers, sources = quickstart
    data = fm.FedData(sources)
    # built twice, separately: equal keys, so one map task in one request
    a = (data * 2 + 1).sum()
    b = (data * 2 + 1).sum()
    assert fm.compute(a, b, a + b) == (35, 35, 70)
    assert requests_per_server(servers) == [1, 1]
    in_bytes = servers[0].traffic.bytes_in
    fm.compute(a)
    assert servers[0].traffic.bytes_in - in_bytes == in_bytes  # same request as for (a, b, a + b)


def test_centered_sum_of_squares_takes_two_rounds(quickstart):
    servers, sources = quickstart
    data = fm.FedData(sources)
    css = ((data - data.sum() / data.len()) ** 2).sum()
    assert css.explain().count("round ") == 2
    assert css.compute() == pytest.approx(np.sum((np.arange(1, 6) - 3.0) ** 2), rel=1e-12)
    assert requests_per_server(servers) == [2, 2]


def test_naive_plan_sends_one_request_per_map_task(quickstart):
    servers, sources = quickstart
    data = fm.FedData(sources, optimize=False)
    assert fm.compute(data.sum(), data.len(), data.sum() / data.len()) == (15, 5, 3.0)
    assert requests_per_server(servers) == [4, 4]


def test_unsupported_operation_names_server_fragment_and_operation(serve):
    server = fm.Server({"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}}})
    server["a"] = [1, 2, 3]
    url = serve(server).url
    data = fm.FedData([fm.Remote(url, "a")])  # the client's default config offers max
    with pytest.raises(fm.OperationNotAllowed) as caught:
        data.max().compute()
    err = caught.value
    assert (err.server, err.fragment, err.operation) == (url, "a", "max")
    assert url in str(err) and "'max'" in str(err)


def test_unknown_fragment_names_server_and_fragment(quickstart):
    _, sources = quickstart
    data = fm.FedData([fm.Remote(sources[0].ip, "no such fragment")])
    with pytest.raises(fm.UnknownFragment) as caught:
        data.sum().compute()
    assert caught.value.server == sources[0].ip
    assert caught.value.fragment == "no such fragment"


def test_missing_column_is_a_task_error_naming_the_operation(serve):
    server = fm.Server()
    server["cohort"] = {"bmi": [22.0, 31.5]}
    url = serve(server).url
    data = fm.FedData([fm.Remote(url, "cohort")])
    with pytest.raises(fm.TaskFailed) as caught:
        data["age"].sum().compute()
    assert (caught.value.server, caught.value.fragment) == (url, "cohort")
    assert caught.value.operation == "data['age'].sum()"
    assert "no column 'age'" in str(caught.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_raises_server_unavailable():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    data = fm.FedData([fm.Remote(url, "a", timeout=2)])
    with pytest.raises(fm.ServerUnavailable) as caught:
        data.sum().compute()
    assert caught.value.server == url


def test_silent_server_times_out():
    # accepts connections (the kernel's backlog) but never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        data = fm.FedData([fm.Remote(url, "a", timeout=0.5)])
        started = time.monotonic()
        with pytest.raises(fm.ServerUnavailable, match="no answer within 0.5 s"):
            data.sum().compute()
        assert time.monotonic() - started < 10  # bounded, not a speed claim


def test_info_endpoint_lists_fragments_without_values(quickstart):
    import requests

    from fedmed import wire

    servers, sources = quickstart
    info = wire.unpack(requests.get(sources[0].ip + "/v1/info", timeout=5).content)
    assert info["protocol"] == wire.PROTOCOL
    assert info["fragments"] == {"test array 1/2": {"rows": 3, "version": 1}}


def test_requests_go_through_the_proxy_the_environment_names(serve, monkeypatch):
    # as with requests: HTTP_PROXY is honoured and NO_PROXY bypasses it
    server = fm.Server()
    server["values"] = [1, 2, 3]
    seen: list[str] = []

    def proxy(environ, start_response):  # stands in for a forward proxy: notes the target, answers itself
        seen.append(environ["PATH_INFO"])
        return server.app(environ, start_response)

    proxy_url = serve(proxy).url
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
    remote._proxy.cache_clear()
    try:
        # no such host: only a proxy can answer for it
        source = fm.Remote(ip="http://fedmed-site.invalid:5000", fragment="values", retries=0)
        assert fm.FedData([source]).sum().compute() == 6
        assert seen == ["/v1/evaluate"]
        bypassed = fm.Remote(ip="http://bypassed.invalid:5000", fragment="values", retries=0)
        with pytest.raises(fm.ServerUnavailable, match="cannot connect"):
            fm.FedData([bypassed]).sum().compute()
        assert seen == ["/v1/evaluate"]
    finally:
        remote._proxy.cache_clear()  # the environment is read once per server


@pytest.mark.parametrize(
    ("url", "warned"),
    [("http://10.1.2.3:5000", True), ("http://fedmed.example.org", True), ("fedmed.example.org:5000", True),
     ("https://fedmed.example.org", False), ("http://127.0.0.1:5000", False), ("http://localhost:5000", False),
     ("http://[::1]:5000", False)],
)
def test_a_token_over_plain_http_to_another_machine_is_warned_about(url, warned):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fm.Remote(ip=url, fragment="cohort", token="s3cret")
        fm.Remote(ip=url, fragment="cohort")  # no token, nothing to leak
    assert [w.category for w in caught] == ([fm.InsecureTokenWarning] if warned else [])
    if warned:
        assert "https://" in str(caught[0].message) and caught[0].filename == __file__
