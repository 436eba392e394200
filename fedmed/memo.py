"""Remember one computation per set of live objects: the work a request's tasks share, done once.

A request asks many tasks over the same evaluated columns (a ladder of 247
binnings of one Cox model reads the same time, event and predictors):
what does not depend on a task's own arguments is computed for the first
and reused by the others. A memo is keyed by the *identity* of its inputs
and holds them only weakly: it never keeps a request's values alive, and
its entry is dropped when they are freed.

>>> import pandas as pd
>>> memo = IdentityMemo()
>>> x = pd.Series([1.0, 2.0])
>>> calls = []
>>> double = lambda s: calls.append(1) or s * 2
>>> memo.get((x,), lambda: double(x)).tolist(), memo.get((x,), lambda: double(x)).tolist(), len(calls)
([2.0, 4.0], [2.0, 4.0], 1)
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Sequence


class IdentityMemo:
    """The value last computed for one tuple of objects (compared by identity), kept while they live."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a weakref callback may run on this thread while it holds the lock
        self._entry: tuple[tuple[weakref.ref, ...], Any] | None = None

    def get(self, inputs: Sequence[Any], compute: Callable[[], Any]) -> Any:
        entry = self._entry
        if entry is not None and len(entry[0]) == len(inputs) and all(
            ref() is obj for ref, obj in zip(entry[0], inputs)
        ):
            return entry[1]
        value = compute()
        try:
            refs = tuple(weakref.ref(obj, self._forget) for obj in inputs)
        except TypeError:  # an input that cannot be weakly referenced (a plain number): not remembered
            return value
        with self._lock:
            self._entry = (refs, value)
        return value

    def _forget(self, _: weakref.ref) -> None:
        with self._lock:
            if self._entry is not None and any(ref() is None for ref in self._entry[0]):
                self._entry = None
