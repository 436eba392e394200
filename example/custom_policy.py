"""Two small custom privacy policies: ``ForbidColumns`` and ``MinimumRows``.

A server loads a policy by import path from the ``privacy`` list of its own
config, like the built-in ones (``docs/privacy.md`` explains the hooks):

.. code-block:: yaml

    privacy:
      - policy: example.custom_policy.ForbidColumns
        params: {columns: [id, name, postcode]}
      - policy: example.custom_policy.MinimumRows
        params: {threshold: 50}
      - policy: fedmed.privacy.Anonymity
        params: {k: 5}

``example.custom_policy`` is importable only when the repository root is on
``sys.path``, so run the server from the repository root: ``python -m
fedmed.cli serve --config ...`` and ``python -c ...`` put the current folder
on the path; the ``fedmed`` command and ``python example/server.py`` do not
(use ``PYTHONPATH=. fedmed serve --config ...``). In a real deployment copy
the classes into a module of your own installed package and name that path.

Example (run from the repository root, e.g. with
``python -m pytest --doctest-modules example/custom_policy.py -p no:cacheprovider``):

>>> import yaml
>>> import fedmed as fm
>>> with open("example/config.yaml", encoding="utf-8") as f:
...     config = yaml.safe_load(f)
>>> config["privacy"] = [
...     {"policy": "example.custom_policy.ForbidColumns", "params": {"columns": ["id"]}},
...     {"policy": "example.custom_policy.MinimumRows", "params": {"threshold": 10}},
...     *config["privacy"],
... ]
>>> server = fm.Server(config=config)
>>> server["cohort"] = {"id": list(range(20)), "age": [30 + i for i in range(20)]}
>>> server["pilot"] = {"id": list(range(8)), "age": [40 + i for i in range(8)]}
>>> cohort = fm.FedData([fm.Simulation(server, "cohort")], config=config)
>>> int(cohort["age"].sum())
790

A query that reads ``id`` anywhere (here in a row filter) is refused
before anything is computed:

>>> cohort[cohort["id"] < 10]["age"].sum().compute()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedmed.errors.PrivacyError: queries may not read the column(s) ['id'] [...policy "ForbidColumns(columns=['id'])"]

An aggregate over the whole table leaves ``id`` out of its result, and the
client is warned:

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     sums = cohort.sum().compute()
>>> sums.to_dict()
{'age': 790}
>>> [str(w.message) for w in caught if issubclass(w.category, fm.PrivacyWarning)]  # doctest: +ELLIPSIS
["simulation:... ['cohort'] data.sum(): column(s) ['id'] withheld by ForbidColumns"]

Every aggregate over the 8-row fragment ``pilot`` is refused:

>>> pilot = fm.FedData([fm.Simulation(server, "pilot")], config=config)
>>> pilot["age"].len().compute()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedmed.errors.PrivacyError: the fragment has 8 rows; this server answers only for fragments of at least 10 [...]
"""

from __future__ import annotations

from typing import Any, Sequence

from fedmed.expr.node import walk
from fedmed.expr.rowwise import Column
from fedmed.ops.columns import COLUMNS
from fedmed.privacy import Policy, Task


class ForbidColumns(Policy):
    """Refuse every task that reads one of ``columns``; leave them out of whole-table results.

    ``admit`` runs before evaluation: it walks the task's expression tree
    (``task.node``, the aggregate's ``Map`` node, and everything below it,
    row filters included) and refuses the task if a ``Column`` node selects
    a forbidden name, at any nesting level. An aggregate over a whole table
    (``data.sum()``) selects no column by name, so ``apply`` removes the
    forbidden columns from its per-column result after evaluation and tells
    the client with ``task.note``.

    This checks names, not data: the one complete protection for a column
    nobody may read is not to load it into the fragment at all.
    """

    def __init__(self, columns: Sequence[str] = ("id",)) -> None:
        self.columns = [str(c) for c in columns]  # shown in errors as ForbidColumns(columns=[...])

    def admit(self, task: Task) -> None:
        read = {node.name for node in walk([task.node]) if isinstance(node, Column)}
        forbidden = sorted(read & set(self.columns))
        if forbidden:
            raise task.refuse(self, f"queries may not read the column(s) {forbidden}")

    def apply(self, task: Task, value: Any) -> Any:
        removed: list[str] = []
        value = self._strip(value, removed)
        if removed:
            task.note(f"column(s) {sorted(set(removed))} withheld by ForbidColumns")
        return value

    def _strip(self, value: Any, removed: list[str]) -> Any:
        """A per-column result (``{"$columns": {...}}``, nested for nested tables) without the forbidden columns."""
        if not (isinstance(value, dict) and COLUMNS in value):
            return value
        kept = {}
        for name, part in value[COLUMNS].items():
            if name in self.columns:
                removed.append(name)
            else:
                kept[name] = self._strip(part, removed)
        return {COLUMNS: kept}


class MinimumRows(Policy):
    """Refuse every aggregate over a fragment of fewer than ``threshold`` rows in total.

    Small fragments (a pilot site, a rare-disease registry) make every
    statistic close to a description of individuals. Unlike ``Anonymity``,
    which counts the rows behind each result, this looks at the size of the
    whole fragment, read from ``task.disclosure`` after evaluation. A
    fragment that cannot report its rows (``task.disclosure is None``) is
    refused: the policy fails closed.
    """

    def __init__(self, threshold: int = 50) -> None:
        if int(threshold) < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = int(threshold)

    def apply(self, task: Task, value: Any) -> Any:
        if task.disclosure is None:
            raise task.refuse(self, "this fragment cannot report its number of rows")
        rows = task.disclosure.rows
        if rows < self.threshold:
            raise task.refuse(
                self, f"the fragment has {rows} rows; this server answers only for fragments of at least {self.threshold}"
            )
        return value
