"""Policies that blur released numbers: rounding to a precision, clipping to a range."""

from __future__ import annotations

import math
from typing import Any

from .base import Policy, Task
from .shapes import map_numbers


class Coarsening(Policy):
    """Round every released number to a multiple of ``value`` (counts of cell tables, not their labels)."""

    def __init__(self, value: float = 1.0) -> None:
        if float(value) <= 0:
            raise ValueError("value must be positive")
        self.value = value

    def apply(self, task: Task, value: Any) -> Any:
        step = self.value
        return map_numbers(task.op, value, lambda x: x if math.isnan(x) else type(x)(round(x / step) * step))


class Saturation(Policy):
    """Clip every released number to ``[min, max]``."""

    def __init__(self, min: float = -math.inf, max: float = math.inf) -> None:
        self.min, self.max = min, max

    def apply(self, task: Task, value: Any) -> Any:
        low, high = self.min, self.max
        return map_numbers(task.op, value, lambda x: x if math.isnan(x) else type(x)(min(max(x, low), high)))
