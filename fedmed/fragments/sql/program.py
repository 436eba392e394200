"""What the compiler hands the fragment: a ``Program`` (the statements) and how to read each ``Output``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...server.evaluate import Failure


@dataclass
class Output:
    """How to read one map output (and its disclosure) from the result row."""

    read: Callable[[tuple], Any]
    disclosure: Callable[[tuple, Any], Any] | None = None  # (first row, second row or None)


@dataclass
class Program:
    """One query for a request's outputs: ``sql`` (None when no output needs one) and how to read each output.

    ``followup`` is the second statement the disclosure needs (None when it needs none); ``extra`` its row.
    """

    sql: str | None
    outputs: dict[int, "Output | Failure"] = field(default_factory=dict)
    followup: str | None = None

    def read(self, position: int, row: tuple | None, extra: tuple | None = None) -> tuple[Any, Any]:
        output = self.outputs[position]
        if isinstance(output, Failure):
            return output, None
        assert row is not None
        value = output.read(row)
        return value, output.disclosure(row, extra) if output.disclosure is not None else None
