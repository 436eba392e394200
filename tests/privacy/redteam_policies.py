"""A custom privacy policy for the red-team tests, loaded by import path ``redteam_policies.ForbidColumns``.

Not importable until a test puts this folder on ``sys.path`` (``tests`` is
not a package), which is what the custom-policy test checks first.
"""

from __future__ import annotations

from typing import Any, Sequence

from fedmed.expr.node import walk
from fedmed.expr.rowwise import Column
from fedmed.privacy import Policy, Task


class ForbidColumns(Policy):
    """Refuse every query that reads one of ``columns`` (e.g. a direct identifier), and log releases."""

    def __init__(self, columns: Sequence[str] = ("id",)) -> None:
        self.columns = list(columns)
        self._log: list[str] = []

    def admit(self, task: Task) -> None:
        read = sorted({n.name for n in walk([task.node]) if isinstance(n, Column)} & set(self.columns))
        if read:
            raise task.refuse(self, f"queries may not read the column(s) {read}")

    def released(self, task: Task, value: Any) -> None:
        self._log.append(task.signature)
