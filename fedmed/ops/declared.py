"""What a map's answer is made of, declared by the map for the server's privacy rules.

Most aggregates release a few sums over the rows they use, and the server
judges them from their inputs alone (``fedmed.server.disclosure``). Some
sum terms the inputs do not show: a GLM round weighs each row by the model
at the analyst's ``beta``, a Cox round sums per time bin over the persons
still at risk. Such a map says so with :func:`declares`, and the rules judge
what it declares as they judge anything else: its row weights as
intermediates, each of its cells as a group of persons, each term summed in
a cell as a sum. The declaration lives beside the map, so the server and
its policies need no statistics of their own.

>>> import pandas as pd
>>> def total_by_day(day, x):
...     return x.groupby(day).sum().tolist()
>>> def by_day(day, x):
...     return Release(cells=(Cells("rows of one day", pd.Series(day.factorize()[0], index=day.index)),),
...                    terms=pd.DataFrame({"x": x}))
>>> declares(by_day)(total_by_day).release(pd.Series([1, 1, 2]), pd.Series([5.0, 6.0, 7.0])).cells[0].codes.tolist()
[0, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd


@dataclass(frozen=True)
class Cells:
    """A partition of the rows into cells, each released as its own sums.

    ``codes`` is each row's cell (0, 1, ...; -1 for a row in no cell), on the
    index of the map's inputs. ``what`` names a cell for messages ("persons
    leaving follow-up in one time bin"). ``summed``: the release holds each
    cell's sums of the terms (not only its count).
    """

    what: str
    codes: pd.Series
    summed: bool = True


@dataclass(frozen=True)
class Release:
    """What a map's answer is made of, beyond its inputs.

    weights : per-row multipliers chosen by the analyst's parameters (a
        model at ``beta``): judged like any intermediate of the expression.
    cells : partitions of the rows whose cells are released one by one:
        each cell is judged like a group of a group-by.
    terms : the per-row terms summed within each cell (before ``scale``), a
        column each; a term's zero rows and non-zero rows are two groups of
        persons that its sum and the cell's count tell apart.
    scale : the per-row factor every term is multiplied by in the sums
        (``exp(x'beta)``), for the dominance rule; None for 1.
    refused : a reason to refuse the release whatever the rows hold (an
        argument the rules cannot judge), or None.
    advice : what to change when a cell is refused.
    """

    weights: Sequence[pd.Series] = ()
    cells: Sequence[Cells] = ()
    terms: pd.DataFrame | None = None
    scale: pd.Series | None = None
    refused: str | None = None
    advice: str = ""


def declares(release: Callable[..., Release | None]) -> Callable[[Any], Any]:
    """Mark a map with ``release(*args)``: what its answer at those arguments is made of (or None)."""
    def mark(fn: Any) -> Any:
        fn.release = release
        return fn
    return mark
