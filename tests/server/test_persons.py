"""Person keys: the config's ``persons`` reaches each task's ``Disclosure``; without the column nothing is answered."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import fedmed as fm
from fedmed.config import load_config
from fedmed.expr.rowwise import Column, Fragment as FragmentNode, Map
from fedmed.privacy.base import Policy, Scoped, Task

ROOT = Path(__file__).resolve().parents[2]
EXACT = ROOT / "example" / "config-exact.yaml"
EXAMPLE = ROOT / "example" / "config.yaml"

LABS = pd.DataFrame({"patient": [1, 1, 1, 2, 2, 3, 4, 4], "value": [5.0, 6.0, 7.0, 4.0, 4.5, 6.5, 5.5, 5.0]})
COHORT = pd.DataFrame({"id": range(6), "age": [50, 61, 72, 45, 38, 66]})


class Recorder(Policy):
    """Releases everything; remembers each task's fragment and the person keys its disclosure carries."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def apply(self, task: Task, value: Any) -> Any:
        self.seen.append((task.fragment, "no disclosure" if task.disclosure is None else task.disclosure.persons))
        return value


def recording_server(persons: dict[str, str], base: Path = EXACT) -> tuple[fm.Server, Recorder]:
    recorder = Recorder()
    config = load_config(base)
    config = dataclasses.replace(config, persons=persons, privacy=(*config.privacy, Scoped(recorder)))
    return fm.Server(config), recorder


def total(server: fm.Server, fragment: str, column: str) -> float:
    data = fm.FedData([fm.Simulation(server, fragment)], config=EXACT)
    return data[column].sum().compute()


def test_each_disclosure_gets_the_person_column_of_its_fragment():
    server, recorder = recording_server({"lab?": "patient", "labs*": "visit"})
    server["labs"], server["cohort"] = LABS, COHORT
    assert total(server, "labs", "value") == LABS["value"].sum()
    assert total(server, "cohort", "age") == COHORT["age"].sum()
    (labs, persons), (cohort, no_persons) = recorder.seen
    assert (labs, cohort, no_persons) == ("labs", "cohort", None)
    pd.testing.assert_series_equal(persons, LABS["patient"])  # one key per row, aligned to the fragment's rows
    assert server.counting("labs") == "persons by column 'patient'"
    assert server.counting("cohort").startswith("rows: no person key declared")
    assert server.info()["fragments"]["labs"] == {"rows": 8, "version": 1, "person": "patient"}
    assert server.info()["fragments"]["cohort"] == {"rows": 6, "version": 1}


@pytest.mark.parametrize("data", [COHORT, COHORT["age"], {"a": COHORT, "b": LABS}])
def test_a_fragment_without_its_person_column_answers_nothing(data):
    server, recorder = recording_server({"cohort": "patient"})
    server["cohort"] = data
    frame = fm.FedData([fm.Simulation(server, "cohort")], config=EXACT)
    with pytest.raises(fm.ServerMisconfigured, match="no column 'patient'") as caught:
        frame.len().compute()
    assert caught.value.fragment == "cohort" and "'cohort'" in str(caught.value)
    assert recorder.seen == []  # refused before any policy saw a value
    assert "has no column 'patient': every task on it is refused" in server.counting("cohort")


def test_the_error_reaches_a_remote_client_as_a_server_fault(serve):
    server, _ = recording_server({"cohort": "patient"})
    server["cohort"] = COHORT
    data = fm.FedData([fm.Remote(serve(server).url, "cohort")], config=EXACT)
    with pytest.raises(fm.ServerMisconfigured, match="'persons'"):
        data["age"].sum().compute()
    assert server.recent[-1]["status"] == 500  # the server's fault, not the request's


def test_dask_fragments_cannot_count_persons_and_sql_fragments_count_them(tmp_path: Path):
    """A Dask fragment reports no disclosure: with a person column declared, policies that need the
    persons behind a result refuse it (fail closed) instead of counting rows. A DuckDB (CSV/Parquet)
    fragment counts distinct persons in SQL, as the pandas engine does."""
    pytest.importorskip("duckdb")
    dd = pytest.importorskip("dask.dataframe")
    from fedmed.fragments import CSV
    from fedmed.fragments.dask import Dask

    labs = pd.DataFrame({"patient": [p // 2 for p in range(60)], "value": [5.0 + i % 7 for i in range(60)]})
    labs.to_csv(tmp_path / "labs.csv", index=False)
    server, recorder = recording_server({"labs*": "patient"}, base=EXAMPLE)
    server["labs"] = labs  # 30 persons: the example config's Anonymity(k=5) releases their sum
    server["labs sql"], server["labs dask"] = CSV(tmp_path / "labs.csv"), Dask(dd.from_pandas(labs, npartitions=2))
    assert total(server, "labs", "value") == labs["value"].sum()
    assert total(server, "labs sql", "value") == labs["value"].sum()
    with pytest.raises(fm.PrivacyError) as caught:
        total(server, "labs dask", "value")
    assert caught.value.policy.startswith("Anonymity")
    assert "cannot count persons" in server.counting("labs dask")
    assert server.counting("labs sql") == "persons by column 'patient'"
    assert [name for name, _ in recorder.seen] == ["labs", "labs sql"]

    # the SQL fragment's disclosure counts persons when asked to: 30 persons behind 60 rows
    frame = FragmentNode("labs sql")
    value = Column(frame, "value")
    nodes, outputs = [frame, value, Map("sum", (value,)), Map("count", (value,))], [2, 3]
    by_rows = server["labs sql"].evaluate(nodes, outputs, server.config)
    by_persons = server["labs sql"].evaluate(nodes, outputs, server.config, person="patient")
    assert [e.value for e in by_rows] == [e.value for e in by_persons] == [labs["value"].sum(), 60]
    assert [e.disclosure.contributing() for e in by_rows] == [60, 60]
    assert [e.disclosure.contributing() for e in by_persons] == [30, 30]
