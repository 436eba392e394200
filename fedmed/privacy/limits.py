"""Policies on queries rather than values: a complexity cap and an answer cache."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any

from .base import MISSING, Policy, Task


class ComplexityCap(Policy):
    """Refuse expressions of more than ``cap`` distinct nodes (counted after merging equal subtrees).

    Long expressions are how masks, paddings and trackers are built; honest
    statistics need a few dozen nodes. Nodes rather than depth: a wide
    expression is as suspicious as a deep one.
    """

    def __init__(self, cap: int = 200) -> None:
        self.cap = int(cap)

    def admit(self, task: Task) -> None:
        if task.size > self.cap:
            raise task.refuse(self, f"the expression has {task.size} nodes; this server accepts at most {self.cap}")


class CacheLimit(Policy):
    """Answer a repeated question with exactly the answer released before.

    Keys are (fragment, version, canonical query), with commutative
    operands put in a fixed order, so ``(a + b).sum()`` and ``(b + a).sum()``
    are one question. Asking again, by any client, returns the same noisy
    value: repeating a query cannot average the noise away, and costs no
    privacy budget. At most ``limit`` answers are kept (least recently used
    go first); a new fragment version starts afresh.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = int(limit)
        self._answers: OrderedDict[tuple[str, int, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, task: Task) -> tuple[str, int, str]:
        return (task.fragment, task.version, task.canonical_key)

    def recall(self, task: Task) -> Any:
        with self._lock:
            key = self._key(task)
            if key not in self._answers:
                return MISSING
            self._answers.move_to_end(key)
            value, notes = copy.deepcopy(self._answers[key])
        for text in notes:
            task.note(text)
        return value

    def released(self, task: Task, value: Any) -> None:
        with self._lock:
            self._answers[self._key(task)] = copy.deepcopy((value, task.notes))
            while len(self._answers) > self.limit:
                self._answers.popitem(last=False)
