"""Policies on queries rather than values: a complexity cap and an answer cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .. import wire
from .base import MISSING, Policy, Task


class ComplexityCap(Policy):
    """Refuse expressions of more than ``cap`` nodes, counted as the server evaluates them.

    Long expressions are how masks, paddings and trackers are built; honest
    statistics need a few dozen nodes. Nodes rather than depth: a wide
    expression is as suspicious as a deep one. A server decodes equal
    table entries into one node and evaluates each node once
    (``fedmed.wire.decode_table``), so the count is of the work done: a
    table of 16,000 entries that repeat a dozen subtrees is a dozen
    evaluations, and is priced as such (``fedmed.server.memory``).
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
    privacy budget. A new fragment version starts afresh.

    Answers are kept as they are sent (msgpack bytes, with their notes), so
    what the cache holds is what it counts: at most ``limit`` answers and
    ``max_bytes`` bytes, least recently used first out. An answer larger
    than ``max_bytes`` on its own is not kept. Only answers that passed
    every policy's ``released`` hook are kept (the ``kept`` hook), and a
    recalled answer passes those hooks again before it is sent.

    Examples
    --------
    >>> from fedmed.expr.rowwise import Column, Fragment, Map
    >>> cache = CacheLimit(max_bytes=1_000)
    >>> task = Task("cohort", 1, Map("set", (Column(Fragment(), "dx"),)))
    >>> cache.kept(task, ["A", "B"])
    >>> cache.recall(task), cache.stored_bytes
    (['A', 'B'], 7)
    >>> cache.kept(Task("cohort", 1, Map("set", (Column(Fragment(), "id"),))), list(range(1_000)))
    >>> cache.stored_bytes  # too big on its own: not kept
    7
    """

    def __init__(self, limit: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.limit = int(limit)
        self.max_bytes = int(max_bytes)
        self._answers: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def stored_bytes(self) -> int:
        """Bytes of the answers kept now."""
        return self._bytes

    def _key(self, task: Task) -> tuple[str, int, str]:
        return (task.fragment, task.version, task.canonical_key)

    def recall(self, task: Task) -> Any:
        key = self._key(task)
        with self._lock:
            packed = self._answers.get(key)
            if packed is None:
                return MISSING
            self._answers.move_to_end(key)
        value, notes = wire.unpack(packed, max_bytes=len(packed))
        for text in notes:
            task.note(text)
        return value

    def kept(self, task: Task, value: Any) -> None:
        try:
            packed = wire.pack([value, task.notes])
        except (TypeError, ValueError, OverflowError):
            return  # it cannot be sent either: the server reports that, nothing to keep
        if len(packed) > self.max_bytes:
            return
        key = self._key(task)
        with self._lock:
            self._bytes += len(packed) - len(self._answers.pop(key, b""))
            self._answers[key] = packed
            while len(self._answers) > self.limit or self._bytes > self.max_bytes:
                _, dropped = self._answers.popitem(last=False)
                self._bytes -= len(dropped)
