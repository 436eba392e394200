"""Privacy policies: what a server does to each map result before it leaves.

A server applies the policies of its own config's ``privacy`` list, in
order, to every map result. A policy is any object with
``apply(task, value) -> value``; it sees a :class:`Task` describing what was
computed and may return the value unchanged, changed (rounded, noised) or
raise a ``ServerError`` to refuse it. The concrete policies (anonymity
thresholds, dominance, noise, budgets...) build on this seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .expr.node import Node, render_code


@dataclass(frozen=True)
class Task:
    """One map task as a policy sees it: the fragment and the map node."""

    fragment: str
    node: Node

    @cached_property
    def signature(self) -> str:
        """The task as readable code, e.g. ``data['age'].sum()`` (built on first use)."""
        return render_code(self.node)


class Policy:
    """Base class of privacy policies; the default releases values unchanged."""

    def apply(self, task: Task, value: Any) -> Any:
        return value
