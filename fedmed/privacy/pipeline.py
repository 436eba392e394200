"""How a server runs one task through its policies: screen before evaluation, release after."""

from __future__ import annotations

from typing import Any, Sequence

from .base import MISSING, Scoped, Task


class Pipeline:
    """The configured policies of a server, applied in config order."""

    def __init__(self, policies: Sequence[Scoped]) -> None:
        self.policies = tuple(policies)

    def screen(self, task: Task) -> tuple[list[Scoped], Any]:
        """The policies that apply to ``task``, and a recalled answer (or ``MISSING``).

        Raises ``PrivacyError`` when a policy refuses the query. A recalled
        answer was released before and is not admitted or charged again.
        """
        active = [p for p in self.policies if p.applies(task)]
        task.epsilon = sum(float(getattr(p.policy, "cost", 0.0) or 0.0) for p in active)
        task.delta = sum(float(getattr(p.policy, "delta_cost", 0.0) or 0.0) for p in active)
        for policy in active:
            recall = policy.hook("recall")
            answer = recall(task) if recall else MISSING
            if answer is not MISSING:
                return active, answer
        for policy in active:
            admit = policy.hook("admit")
            if admit:
                admit(task)
        return active, MISSING

    def release(self, task: Task, value: Any, active: Sequence[Scoped]) -> Any:
        """``value`` after every active policy's ``apply`` and ``released``; raises ``PrivacyError`` to suppress it.

        Only once every ``released`` hook has passed the value do the
        ``kept`` hooks see it: a withheld value is never kept.
        """
        for policy in _noise_first(task, active):
            apply = policy.hook("apply")
            if apply:
                value = apply(task, value)
            policy.applied += 1
        _pass_released(task, value, active)
        for policy in active:
            kept = policy.hook("kept")
            if kept:
                kept(task, value)
        return value

    def recalled(self, task: Task, answer: Any, active: Sequence[Scoped]) -> Any:
        """``answer`` once every active policy's ``released`` hook has passed it; raises to withhold it.

        A recalled answer is exactly one released before, so ``apply`` does
        not judge it again; but no answer leaves without the ``released``
        hooks, which may depend on who asks or on what was released since.
        """
        _pass_released(task, answer, active)
        return answer


def _pass_released(task: Task, value: Any, active: Sequence[Scoped]) -> None:
    for policy in active:
        released = policy.hook("released")
        if released:
            released(task, value)


def _noise_first(task: Task, active: Sequence[Scoped]) -> Sequence[Scoped]:
    """Config order, except that on a noised task the policies that charge privacy loss (noise) go
    first: every other policy then judges the noisy value, so its refusals are post-processing of an
    accounted release instead of an exact answer outside the accounting."""
    if not getattr(task, "noised", False):
        return active
    charges = lambda p: bool(getattr(p.policy, "cost", 0) or getattr(p.policy, "delta_cost", 0))  # noqa: E731
    return sorted(active, key=lambda p: not charges(p))
