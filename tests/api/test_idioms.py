"""The everyday pandas idioms of benchmarks/idioms.py, as a test: every one equals pandas on a FedData
over three uneven servers, and every row-level call is refused (issue 16)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "idioms.py"
spec = importlib.util.spec_from_file_location("idioms", PATH)
idioms = importlib.util.module_from_spec(spec)
sys.modules["idioms"] = idioms
spec.loader.exec_module(idioms)


@pytest.fixture(scope="module")
def pair() -> tuple[pd.DataFrame, object]:
    frame = idioms.cohort()
    return frame, idioms.federated(frame)


@pytest.mark.parametrize("name", list(idioms.IDIOMS))
def test_each_idiom_equals_pandas(pair, name: str) -> None:
    frame, data = pair
    idiom = idioms.IDIOMS[name]
    assert idioms.same(idiom(data), idiom(frame)), name


@pytest.mark.parametrize("name", list(idioms.REFUSED))
def test_each_row_level_call_is_refused(pair, name: str) -> None:
    import fedmed as fm

    with pytest.raises(fm.RowLevelError):
        idioms.REFUSED[name](pair[1])


def test_the_comparison_tells_different_results_apart() -> None:
    assert not idioms.same(1.0, 1.0 + 1e-6) and idioms.same(np.nan, float("nan"))
    assert not idioms.same(pd.Series([1.0], index=["a"]), pd.Series([1.0], index=["b"]))
    assert not idioms.same(pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]}))
    assert not idioms.same((3, 2), (3, 1))


def test_the_rounds_the_issue_sets() -> None:
    counted = idioms.rounds(servers=3)
    for name, (_, rounds) in idioms.ROUNDS.items():
        assert counted[name] == {"rounds": rounds, "requests": 3 * rounds}, name
