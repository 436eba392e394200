"""The quickstart client: run `python example/server.py` first, then `python example/client.py`."""

from pathlib import Path

import fedmed as fm

# toy arrays of 3 and 2 values: the privacy-aware config.yaml would suppress them
CONFIG = Path(__file__).with_name("config-exact.yaml")

sources = [
    fm.Remote(ip="http://127.0.0.1:5000", fragment="test array 1/2"),
    fm.Remote(ip="http://127.0.0.1:5001", fragment="test array 2/2"),
]
data = fm.FedData(sources, config=CONFIG)
mean = data.sum() / data.len()
print("Mean", mean)  # evaluates: one request per server
print(mean.explain())  # the plan, without evaluating
