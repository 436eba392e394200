"""What a map result discloses, judged on the values the server computed.

Privacy policies need more than the released value: how many persons stand
behind it, how many its subset leaves out (the differencing attack
``sum(all) - sum(all but one)``), how large each person's contribution is
(the dominance rule), and above all whether any step of the expression
*singles out* a few persons. ``Disclosure`` answers these from the evaluated
node values, computed only when a policy asks.

Singling out is judged on values, not on the shape of the expression: an
analyst can make one row different in endless ways (``x * (id == 17)``,
``x ** (id == 17)``, ``0 ** abs(id - 17)``, ``clip(1 - abs(age - 97), 0, 1)``,
``2 ** (-30 * (id - 17) ** 2)``...), so every intermediate row-wise value of
the task is examined on the rows it can influence (its *scope*). An
intermediate singles out when, within its scope,

- it takes one value on all persons but 1 to k-1 of them (a mask, a shifted
  mask, a power or a clip that is 0 except on one row: any indicator);
- the arithmetic makes it missing on 1 to k-1 persons whose raw values are
  present (``x / mask``, ``log`` of a value that is negative for one row);
- 1 to k-1 persons hold almost all of its spread around its median
  (``concentration``): soft indicators whose other rows are tiny but not
  exactly equal, and weights that grow geometrically (``2 ** id``), which pack
  many persons into one number;
- it combines a list constant by position, row by row or column by column
  (a row's position must not be addressable).

Row filters are judged the same way: each filter, within the rows that pass
the task's other filters, must keep and drop 0 or at least k persons.

Raw columns are not judged as selectors (their rare values are what the cell
rules of count tables are for); only what the analyst's arithmetic makes of
them. Natural missing values and natural zeros are what the data say: they
never count as left out.

Counting is by person when the server declares a person column for the
fragment (``persons:`` in its config), by row otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from ..expr.node import Node, render_code, walk
from ..memo import IdentityMemo
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map
from ..expr.tables import NEW_ROWS

#: Elementwise operations whose list operands broadcast by position (one entry per row or column).
_POSITIONAL = {
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "eq", "ne", "lt", "le", "gt", "ge",
    "and", "or", "fillna", "clip",
}


#: The term masks of the last declared release judged (``Disclosure._term_masks``).
_TERM_MASKS = IdentityMemo()

#: Where an influence move puts a number (``_moves``): far beyond any value, the same on every row, so that which
#: rows a move changes never depends on the moved value itself (a relative move did: docs/privacy.md 5.3).
FAR_INTEGERS = (2**20, -(2**20))  # small enough that a square or a cube of it stays in 64 bits on both engines
FAR_NUMBERS = (1e15, -1e15)
#: Where an influence move puts a date (``_moves``): beyond any date a fragment holds, whatever the query's constants.
FAR_DATES = (np.datetime64("9999-12-31", "us"), np.datetime64("0001-01-01", "us"))
#: And a difference of dates: further than any two such dates are apart (10,000 years, in microseconds).
FAR_DELTAS = (np.timedelta64(3_652_500 * 86_400_000_000, "us"), np.timedelta64(-3_652_500 * 86_400_000_000, "us"))

#: Most row-wise steps whose influence one task's disclosure judges (each costs a recomputation).
MAX_INFLUENCE = 64

#: Aggregates that release sums of several inputs side by side (whose differences are then released too).
_SIDE_BY_SIDE = {"comoments", "comoment_matrix", "glm_step", "glm_family_step", "site_fit"}


@dataclass(frozen=True)
class Finding:
    """Why a task singles out persons: the subexpression and what it does (no values, no counts)."""

    node: Node
    what: str

    def __str__(self) -> str:
        return f"{render_code(self.node, literals=False)[:120]} {self.what}"


class Disclosure:
    """The persons (or rows) behind one map result, judged from the evaluated node values.

    Parameters
    ----------
    node : the ``Map`` node of the task.
    values : ``id(node) -> evaluated value`` for every node of the task.
    index : the fragment's row labels.
    persons : the person key of every row (a Series on ``index``), or None to count rows.
    rerun : ``rerun(map, overrides)``, the map's arguments recomputed with some node values
        replaced (the engine's "what if"), or None when the engine cannot (then influence is
        not judged and every other rule still is).
    release : the map's declaration of what its answer is made of (``fedmed.ops.declared``):
        ``release(*arguments)``, or None for a map that releases sums of its inputs only.
    lineage : for a task over tables made in the request (a merge, a per-person group-by:
        ``fedmed.server.lineage``), its row spaces and the person of each row; ``index`` and
        ``persons`` are then those of the rows the map reads. None for a task over one fragment.
    """

    def __init__(self, node: Node, values: Mapping[int, Any], index: pd.Index, persons: Any = None,
                 rerun: Any = None, release: Any = None, lineage: Any = None, within: Any = None) -> None:
        self.node = node
        self.within = within  # the rows judged (a mask on index), None for all: a row space below a relation
        self._values = values
        self.index = index
        self.persons = persons
        self._rerun = rerun  # (map, {id(node): value}, also) -> the map's arguments (and also's) recomputed, or None
        self._release = release
        self.lineage = lineage

    @property
    def derived_rows(self) -> bool:
        """Whether the result reads rows a relation made: a person may stand behind many of them (a join
        copies a patient into each of their lab rows), which a guarantee about one row does not cover."""
        return self.lineage is not None and self.lineage.relations

    # -- counting ------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        """What the rules count: ``"persons"`` or ``"rows"``."""
        return "rows" if self.persons is None else "persons"

    @property
    def rows(self) -> int:
        """Persons (or rows) of the whole fragment."""
        return self.count(pd.Series(True, index=self.index))

    def count(self, mask: pd.Series) -> int:
        """Persons (or rows) where ``mask`` holds; a row without a person key is a person of its own."""
        mask = self._align(mask)
        if self.persons is None:
            return int(mask.sum())
        keys = self.persons[mask.to_numpy()]
        return int(keys.nunique(dropna=True) + keys.isna().sum())

    # -- what the aggregate was computed from ---------------------------------------------------
    @cached_property
    def inputs(self) -> list[Any]:
        """The map's evaluated arguments (Series, tables or constants)."""
        return [self._values[id(arg)] for arg in self.node.args]

    def views(self) -> Iterator[tuple[str | None, list[pd.Series]]]:
        """The aggregate's row-wise inputs, one view per column of a whole-table input.

        ``data.max()`` over a table is one result per column, each computed
        from that column's own present values: each is judged on its own.
        """
        series = [v for v in self.inputs if isinstance(v, pd.Series)]
        tables = [v for v in self.inputs if isinstance(v, pd.DataFrame)]
        if not tables:
            yield None, series
            return
        for name in tables[0].columns:
            yield str(name), [tables[0][name], *series]

    def used_in(self, view: list[pd.Series], present: bool = True) -> pd.Series:
        """Rows that pass the task's filters and (with ``present``) have every input of ``view``."""
        used = self._graph.selected
        if present:
            for value in view:
                used = used & self._align(value.notna())
        return used

    @property
    def used(self) -> pd.Series:
        """Rows the result was computed from (for a whole table: rows with a value in some column)."""
        masks = [self.used_in(view) for _, view in self.views()]
        return _any(pd.Series(False, index=self.index), masks) if masks else self._graph.selected

    def contributing(self, additive: bool = False, present: bool = True) -> int:
        """Persons behind the result: the smallest positive count over its columns (0 if none).

        With ``additive`` (sums) a zero term contributes nothing; with
        ``present=False`` (``len``) missing values count too.
        """
        counts = []
        for _, view in self.views():
            used = self.used_in(view, present)
            if additive and view:
                used = used & self._align(_nonzero(view[0]))
            counts.append(self.count(used))
        positive = [c for c in counts if c > 0]
        return min(positive) if positive else 0

    def complement(self) -> int:
        """Persons with raw values present that the task's filters leave out."""
        graph = self._graph
        return self.count(graph.present & ~graph.selected)

    def holders(self, value: Any, column: str | None = None) -> int:
        """Persons, among the rows used, whose input (``column`` of a table) equals ``value``."""
        for name, view in self.views():
            if name == column and view:
                used = self.used_in(view)
                values = view[0].to_numpy(dtype=object)
                present = ~pd.isna(values)  # pd.NA compares to neither true nor false: a missing row holds nothing
                same = np.zeros(len(values), dtype=bool)
                same[present] = np.asarray(values[present] == value, dtype=bool)
                equal = pd.Series(same, index=view[0].index)
                return self.count(used & self._align(equal))
        return 0

    def contributions(self) -> np.ndarray:
        """Each used person's absolute contribution (summed over the inputs), largest first."""
        used = self.used
        total = pd.Series(0.0, index=self.index)
        for value in self.inputs:
            if isinstance(value, pd.DataFrame):
                value = value.select_dtypes("number").abs().sum(axis=1)
            if isinstance(value, pd.Series) and _is_number(value):
                total = total.add(value.astype(float).abs().reindex(self.index).fillna(0.0), fill_value=0.0)
        return np.sort(self._per_person(total[used]).to_numpy())[::-1]

    # -- singling out ---------------------------------------------------------------------------
    def singled_out(self, k: int, concentration: float = 0.9) -> Finding | None:
        """The first step of the task that singles out 1 to ``k - 1`` persons, or None.

        ``concentration`` is the share of an intermediate's spread around its
        median that ``k - 1`` persons may not exceed.
        """
        graph = self._graph
        steps = len(self._influence_candidates()) + (len(self.lineage.alternatives()) if self.lineage else 0)
        if self._rerun is not None and steps > MAX_INFLUENCE:
            # before any other work: judging each step costs a recomputation of the task
            return Finding(self.node, f"has more than {MAX_INFLUENCE} row-wise steps, too many to judge; simplify it")
        finding = self._rowwise(k, concentration, first=self._declared_cells)
        if finding is not None:
            return finding
        return (self._through_relations(k, concentration) or self._within_groups(k, concentration)
                or self._jointly(k, concentration) or self._influence(k))

    def _rowwise(self, k: int, share: float, first: Any = None) -> Finding | None:
        """The rules of one row space: list constants, row filters, intermediates (``first``: a rule
        judged after the list constants)."""
        graph = self._graph
        for node in graph.lists:
            return Finding(node, "combines a list constant row by row (or column by column): positions must not be addressable")
        finding = first(k) if first is not None else None
        if finding is not None:
            return finding
        for node, dropped, scopes in graph.filters:
            for scope in scopes:
                kept, out = self.count(scope & ~dropped), self.count(scope & dropped)
                if 0 < out < k or 0 < kept < k:
                    return Finding(node, f"is a row filter that keeps or drops fewer than {k} {self.unit}")
        for node, scopes in graph.derived:
            value = self._values.get(id(node))
            columns = value.items() if isinstance(value, pd.DataFrame) else [(None, value)]
            for scope in scopes:
                for _, column in columns:
                    what = self._selects(node, column, scope, k, share)
                    if what:
                        return Finding(node, what)
        return None

    # -- tables made in the request: every row space judged, and what each relation leaves out ---------------
    def _through_relations(self, k: int, share: float) -> Finding | None:
        """For a task over tables made in the request (``fedmed.server.lineage``), the rules of each row
        space below the one the map reads, judged in its own rows and persons (a filter on lab rows, a
        marker made of lab values, under a per-person group-by), then what each filter there and each
        join leaves out, judged by its effect on the result.

        A filter or a join below a group-by cannot be judged by the rows it drops alone: ``labs.value <
        v`` may drop rows of a hundred persons yet remove just one from the patients the analyst's own
        filter on the merged table keeps (``cohort.age > 90``). So the task is recomputed as if the step
        kept every row (a filter: its input; a join: an outer join) and the persons whose part in the
        result changes are counted, exactly as for a moved value (``_influence``).
        """
        lineage = self.lineage
        if lineage is None:
            return None
        # the persons the result is about: those of the rows that pass the map's own filters; and for a
        # group-by released group by group, each person's group (a person's first row decides)
        selected = self._graph.selected.to_numpy()
        reach = self._keys[selected].unique()
        groupings = [pd.Series(codes.to_numpy()[selected], index=self._keys[selected].to_numpy()).groupby(level=0).first()
                     for codes in self._groupings]
        for top, source in lineage.segments():
            persons = lineage.persons(source)
            # judged in all its rows, then in the rows of the persons the result is about (a marker that
            # splits the lab rows of many persons may single out one of those a filter on the cohort keeps),
            # then within each released group's persons
            for within in (None, persons.isin(reach)):
                space = Disclosure(top, self._values, lineage.index(source), persons, lineage=lineage, within=within)
                finding = space._rowwise(k, share)
                if finding is not None:
                    return finding
            for group_of in groupings:
                space = Disclosure(top, self._values, lineage.index(source), persons, lineage=lineage)
                groups = pd.Series(persons.map(group_of).fillna(-1).to_numpy(dtype=int), index=persons.index)
                finding = space._within(groups, k, share)
                if finding is not None:
                    return finding
        if self._rerun is None:
            return None
        for node, everything, what in lineage.alternatives():
            changed = self._changed({id(node): everything()})
            if changed is None:
                return Finding(node, "cannot be judged: the task fails when it keeps every row")
            counts = [self._how_many(changed)]
            for group_of in groupings:  # each group's value is released on its own
                known = changed[changed.isin(group_of.index)]
                counts += list(known.groupby(known.map(group_of).to_numpy()).nunique())
            if any(0 < n < k for n in counts):
                return Finding(node, f"is a {what} that leaves out fewer than {k} {self.unit} of the result")
        return None

    def _changed(self, overrides: dict[int, Any]) -> pd.Series | None:
        """The persons (a key per row) whose part in the result changes when some node values are replaced,
        or None when the task fails then.

        A row's part changes when one of its terms does; rows with a natural missing value are left out
        (what the data say), and so are rows that appear or vanish with nothing but missing terms, except
        for ``len``, which counts them. Over tables made in the request, rows appear and vanish (a join
        kept whole): their labels follow them (``fedmed.server.lineage``), and their persons come from
        the recomputed table.
        """
        lineage = self.lineage
        again = self._rerun(self.node, overrides, (lineage.source,) if lineage is not None else ())
        if again is None:
            return None
        if lineage is None:
            changed = pd.Series(False, index=self.index)
            for before, after in zip(self.inputs, again):
                if isinstance(before, pd.Series) and isinstance(after, pd.Series):
                    changed = changed | self._align(_differs(before, after))
            return self._keys[(changed & self._graph.present).to_numpy()]
        *again, table = again
        persons = self._keys_of(lineage.persons(lineage.source, table))
        labels = []
        pairs = []
        for before, after in zip(self.inputs, again):
            if isinstance(before, (pd.Series, pd.DataFrame)) and isinstance(after, (pd.Series, pd.DataFrame)) \
                    and _same_labels(before.index, after.index):
                after = after.set_axis(before.index)  # the same rows: compared in place, not by their labels
            if isinstance(before, pd.DataFrame) and isinstance(after, pd.DataFrame):
                if after.index is not before.index:
                    labels.append(before.index.symmetric_difference(after.index))  # len counts rows, whatever they hold
                pairs += [(before[c], after[c]) for c in before.columns if c in after.columns
                          and isinstance(before[c], pd.Series) and isinstance(after[c], pd.Series)]
            elif isinstance(before, pd.Series) and isinstance(after, pd.Series):
                pairs.append((before, after))
        for before, after in pairs:
            differs = _differs(before, after)
            if self.node.op != "len":
                terms = before.reindex(differs.index).notna() | after.reindex(differs.index).notna()
                differs &= terms
            labels.append(differs.index[differs.to_numpy()])
        labels = [lab for lab in labels if len(lab)]  # (an empty flat index would turn labels into tuples)
        if not labels:
            return self._keys.iloc[:0]
        changed = labels[0].append(labels[1:]).unique() if len(labels) > 1 else labels[0]
        present = self._graph.present
        if changed.isin(self.index).all():  # no row appeared: the result's own rows, their own persons
            mask = self._align(pd.Series(True, index=changed)) & present  # a natural missing raw value: left out
            return self._keys[mask.to_numpy()]
        gone = present.index[~present.to_numpy()]  # rows of this result with a natural missing raw value
        changed = changed.difference(gone, sort=False)
        keys = pd.concat([self._keys, persons[~persons.index.isin(self.index)]])
        return keys.reindex(changed)

    # -- group-bys: each group is a scope of its own ---------------------------------------------
    def _within_groups(self, k: int, share: float) -> Finding | None:
        """For a group-by (``grouped``), the rules above judged within each group's rows.

        A group releases its own sum, so it acts as a row filter: an
        intermediate that marks one row in every group of five (``age * (id %
        5 == 2) + 40`` grouped by ``id // 5``) marks a fifth of the fragment,
        which no scope of the whole fragment catches, but singles out one
        person per group. Judged vectorised over the groups (one pass per
        intermediate), as the filters and intermediates of a task are.
        """
        for groups in self._groupings:
            finding = self._within(groups, k, share)
            if finding is not None:
                return finding
        return None

    @cached_property
    def _groupings(self) -> list[pd.Series]:
        """Each partition of the rows whose parts are released one by one: a group-by's groups, the cells a
        map declares (``fedmed.ops.declared``); each a group number per row, -1 outside."""
        if getattr(self.node, "op", None) == "grouped":
            return [] if self._groups is None else [self._groups]
        release = self.declared
        if release is None:
            return []
        return [cells.codes.reindex(self.index, fill_value=-1).astype(int) for cells in release.cells if cells.summed]

    def _within(self, groups: pd.Series, k: int, share: float) -> Finding | None:
        graph = self._graph
        for node, dropped, scopes in graph.filters:
            for scope in scopes:
                kept = self._count_by_group(scope & ~dropped, groups)
                out = self._count_by_group(scope & dropped, groups)
                if ((out > 0) & (out < k)).any() or ((kept > 0) & (kept < k) & (out > 0)).any():
                    return Finding(node, f"is a row filter that keeps or drops fewer than {k} {self.unit} "
                                         "within a group of the group-by")
        for node, scopes in graph.derived:
            value = self._values.get(id(node))
            columns = value.items() if isinstance(value, pd.DataFrame) else [(None, value)]
            for scope in scopes:
                for _, column in columns:
                    what = self._selects_by_group(node, column, scope, groups, k, share)
                    if what:
                        return Finding(node, f"{what} within a group of the group-by")
        return None

    @cached_property
    def _groups(self) -> pd.Series | None:
        """Each row's group number (-1 without a key), from the group-by's key inputs."""
        keys = [self._values.get(id(arg)) for arg in self.node.args[2:]]
        keys = [k for k in keys if isinstance(k, pd.Series)]
        if not keys:
            return None
        frame = pd.DataFrame({f"k{i}": k.reindex(self.index) for i, k in enumerate(keys)}, index=self.index)
        return frame.groupby(list(frame.columns), dropna=True, sort=False, observed=True).ngroup()

    def _count_by_group(self, mask: pd.Series, groups: pd.Series) -> pd.Series:
        """Persons (or rows) where ``mask`` holds, per group (rows without a group left out)."""
        mask = self._align(mask) & (groups >= 0)
        if self.persons is None:
            return mask.groupby(groups).sum()
        keys = self.persons.reindex(self.index)
        keys = keys.where(keys.notna(), pd.Series([("row", i) for i in self.index], index=self.index, dtype=object))
        return keys[mask].groupby(groups[mask]).nunique().reindex(np.unique(groups[groups >= 0]), fill_value=0)

    def _selects_by_group(self, node: Node, value: pd.Series, scope: pd.Series, groups: pd.Series, k: int,
                          share: float) -> str | None:
        """``_selects`` within every group at once: what ``value`` does to single out 1 to k-1 persons."""
        scope = scope & self._align(pd.Series(True, index=value.index))
        present = scope & self._align(_finite(value))
        nulled = scope & self._graph.raw_present[id(node)] & ~present
        nulled_n, present_n = self._count_by_group(nulled, groups), self._count_by_group(present, groups)
        if ((nulled_n > 0) & (nulled_n < k)).any():
            return f"is missing on fewer than {k} {self.unit} whose values are present"
        if ((nulled_n > 0) & (present_n > 0) & (present_n < k)).any():
            return f"is present on fewer than {k} {self.unit} only"
        rows = present & (groups >= 0)
        values = value.reindex(self.index)[rows.to_numpy()]
        if values.empty:
            return None
        labels = groups[rows.to_numpy()]
        # the most common value of each group, and who differs from it
        mode = values.groupby(labels.to_numpy()).agg(lambda v: v.value_counts(dropna=True).index[0])
        minority = pd.Series(values.to_numpy() != mode.reindex(labels.to_numpy()).to_numpy(), index=values.index)
        minority_n = self._count_by_group(self._align(minority), groups)
        majority_n = self._count_by_group(self._align(~minority) & self._align(pd.Series(True, index=values.index)),
                                          groups).reindex(minority_n.index, fill_value=0)
        # in a small group of distinct values (a derived covariate in a cell of five) the "mode" is one
        # value among equals: an indicator is a value most of the group shares and a few do not
        if ((minority_n > 0) & (minority_n < k) & (majority_n > minority_n)).any():
            return f"takes one value on all but fewer than {k} {self.unit}"
        if _is_number(values) and values.dtype != bool:
            numbers = values.astype(float)
            finite = np.isfinite(numbers.to_numpy())
            numbers, labels = numbers[finite], labels[finite]
            median = numbers.groupby(labels.to_numpy()).transform("median")
            spread = (numbers - median).abs()
            if self.persons is not None:
                return None  # per person spreads need the person key per group: judged over the fragment only
            total = spread.groupby(labels.to_numpy()).sum()
            size = spread.groupby(labels.to_numpy()).size()
            distinct = numbers.groupby(labels.to_numpy()).nunique()
            top = spread.groupby(labels.to_numpy()).apply(lambda v: float(np.sort(v.to_numpy())[::-1][: k - 1].sum()))
            if ((total > 0) & (size >= k) & (distinct > 2) & (top > share * total)).any():
                return f"puts almost all of its spread on fewer than {k} {self.unit}"
        return None

    def _influence(self, k: int) -> Finding | None:
        """An intermediate whose value reaches the result through 1 to k-1 persons' rows only.

        The result's terms are recomputed with each intermediate changed on
        every row (a boolean flipped; a number or a date set to a constant
        far up, then far down, keeping its type): the rows whose terms change are the rows through
        which that value reaches the result. ``id + y * (id <= 17) - y * (id
        < 17)`` has no step that singles anyone out, yet ``y`` reaches its
        sum through row 17 alone; the same holds for a bit of ``y`` taken
        with a comparison. Each move is judged on its own, so that a decoy
        that only one direction trips (``+ (y > 13)``) hides nothing; rows
        with a natural missing value are left out (what the data say, as
        elsewhere); a move the task cannot be recomputed with is refused,
        not skipped. Which rows change depends on the expression and on the
        other columns, not on the value being protected, so a refusal says
        no more than the analyst's own expression does.
        """
        if self._rerun is None or not any(isinstance(v, pd.Series) for v in self.inputs):
            return None
        # a count table or an extreme judges the small side of its own input itself (cells, holders):
        # there, a comparison whose one side is small must not be refused for what each move alone trips
        each_move = self.node.op not in _CELLS_AND_EXTREMES
        if self.lineage is None:
            return self._influence_in_rows(k, each_move)
        for node in self._influence_candidates():
            union = []
            for moved in _moves(self._values[id(node)]):
                changed = self._changed({id(node): moved})
                if changed is None:
                    return Finding(node, "cannot be judged: changing its values makes the task fail")
                union.append(changed)
                if each_move and 0 < self._how_many(changed) < k:
                    return Finding(node, f"reaches the result through fewer than {k} {self.unit} only")
            if union and 0 < self._how_many(pd.concat(union)) < k:
                return Finding(node, f"reaches the result through fewer than {k} {self.unit} only")
        return None

    def _influence_in_rows(self, k: int, each_move: bool) -> Finding | None:
        """``_influence`` over one fragment's rows: masks on the fragment's index, no row appears."""
        present = self._graph.present
        for node in self._influence_candidates():
            union = pd.Series(False, index=self.index)
            for moved in _moves(self._values[id(node)]):
                again = self._rerun(self.node, {id(node): moved})
                if again is None:
                    return Finding(node, "cannot be judged: changing its values makes the task fail")
                changed = pd.Series(False, index=self.index)
                for before, after in zip(self.inputs, again):
                    if isinstance(before, pd.Series) and isinstance(after, pd.Series):
                        changed = changed | self._align(_differs(before, after))
                union |= changed
                if each_move and 0 < self.count(changed & present) < k:
                    return Finding(node, f"reaches the result through fewer than {k} {self.unit} only")
            if 0 < self.count(union & present) < k:
                return Finding(node, f"reaches the result through fewer than {k} {self.unit} only")
        return None

    def _influence_candidates(self) -> list[Node]:
        """The row-wise steps whose influence is judged (not the map's own arguments: they reach every row),
        in every row space of the task (a lab value under a per-person group-by reaches the result through
        its person's row)."""
        order, keys = self._graph.order, set()
        if self.lineage is not None:
            order = [*order, *(n for top, _ in self.lineage.segments() for n in self.lineage.nodes(top))]
            keys = self.lineage.keys()
        unique = [n for n in {id(n): n for n in order}.values() if id(n) not in keys]
        return [node for node in unique
                if not isinstance(node, (Literal, Fragment, Filter, Map)) and not any(node is a for a in self.node.args)
                and isinstance(self._values.get(id(node)), pd.Series)]

    @cached_property
    def _keys(self) -> pd.Series:
        """Each row's person (a row without a person key, or every row when rows are counted, a person of its
        own), on ``index``."""
        if self.persons is None:  # rows are counted: a row's position is its key (labels are unique)
            return pd.Series(np.arange(len(self.index)), index=self.index)
        return self._keys_of(self.persons.reindex(self.index))

    def _how_many(self, keys: pd.Series) -> int:
        """Persons among some rows' keys (``_keys``); counting rows, a row's key is its position."""
        if self.persons is None and self.lineage is None:
            return int(keys.index.nunique()) if not keys.index.is_unique else len(keys)
        return int(keys.nunique())

    @staticmethod
    def _keys_of(persons: pd.Series) -> pd.Series:
        alone = persons.isna().to_numpy()
        if not alone.any():
            return persons
        keys = persons.astype(object)
        keys[alone] = [("row", i) for i in persons.index[alone]]
        return keys

    def _jointly(self, k: int, share: float) -> Finding | None:
        """What the aggregate does with its inputs together that no single input shows.

        Several inputs of one sum are released side by side, so their
        differences are released too: ``comoment_matrix(y * (id <= 17),
        y * (id < 17))`` gives ``y`` of one row. Any two numeric inputs that
        are proportional on all rows but 1 to k-1 single those rows out. And
        ``glm_step`` weighs each row by the model at the analyst's ``beta``:
        a ``beta`` that puts all the weight on one row makes its Hessian that
        row's value, so the weights are judged like any intermediate.
        """
        used = self._graph.selected
        numeric = [(arg, v) for arg, v in zip(self.node.args, self.inputs) if isinstance(v, pd.Series) and _is_number(v)]
        if self.node.op not in _SIDE_BY_SIDE:
            numeric = []
        for (node, a), (other, b) in itertools.combinations(numeric, 2):
            if _is_raw_column(node) and _is_raw_column(other):
                continue  # two columns as the data hold them: nothing the analyst shaped
            both = used & self._align(a.notna()) & self._align(b.notna())
            rows = both.to_numpy()
            x = a.reindex(self.index)[rows].astype(float).to_numpy()
            y = b.reindex(self.index)[rows].astype(float).to_numpy()
            # a - lam * b vanishes where the two are zero together and where a / b == lam: for the most
            # common ratio lam, the rows left are all that their difference (scaled) is made of
            live = ~((x == 0) & (y == 0))
            with np.errstate(all="ignore"):
                ratio = pd.Series(x[live] / y[live], index=self.index[rows][live]).fillna(np.inf)
            counts = ratio.value_counts()
            if len(counts) > 1 and 0 < self.count(self._align(ratio != counts.index[0])) < k:
                return Finding(node, f"differs from a multiple of another input on fewer than {k} {self.unit}")
        release = self.declared
        for weights in release.weights if release is not None else ():
            what = self._selects(self.node, weights, used, k, share)  # a weight missing on a few rows singles them out
            if what:
                return Finding(self.node, f"(its row weights at this beta) {what}")
        return None

    # -- what the map declares it releases (fedmed.ops.declared) --------------------------------
    @cached_property
    def declared(self) -> Any:
        """The map's ``Release`` at these arguments (weights, cells, terms), or None."""
        return None if self._release is None else self._release(*self.inputs)

    def _declared_cells(self, k: int) -> Finding | None:
        """Each declared cell, and within it the rows where each summed term is zero and non-zero, hold 0 or
        at least k persons: a cell's sum is an aggregate of its own, and a term that is zero on some of its
        rows (a 0/1 predictor) splits it in two whose counts the sums give away."""
        release = self.declared
        if release is None:
            return None
        if release.refused:
            return Finding(self.node, f"is not released for {release.refused}")
        used = self.used.to_numpy()
        present, nonzero = self._term_masks(release)
        for cells in release.cells:
            codes = np.where(used, cells.codes.reindex(self.index, fill_value=-1).to_numpy(dtype=int), -1)
            masks = [np.ones((len(codes), 1), bool)] + ([nonzero, present & ~nonzero] if cells.summed else [])
            labels = [""] + ([f", those with {t} non-zero" for t in release.terms.columns]
                             + [f", those with {t} zero" for t in release.terms.columns] if cells.summed else [])
            counts = self._per_cell(codes, np.hstack(masks))
            small = ((counts > 0) & (counts < k)).any(axis=0)
            if small.any():
                label = labels[int(np.flatnonzero(small)[0])]
                return Finding(self.node, f"holds fewer than {k} {self.unit} in one of its cells ({cells.what}"
                                          f"{label}); {release.advice}".rstrip("; "))
        return None

    def _term_masks(self, release: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per row of the fragment and term: present, and non-zero (False where the row has no terms).
        The same terms judged for many tasks of a request (a ladder of binnings) are masked once."""
        if release.terms is None:
            return self._masks(pd.DataFrame(index=self.index[:0]))
        return _TERM_MASKS.get((release.terms, self.index), lambda: self._masks(release.terms))

    def _masks(self, terms: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        where = self.index.get_indexer(terms.index)
        present = np.zeros((len(self.index), terms.shape[1]), bool)
        nonzero = np.zeros_like(present)
        values = terms.to_numpy(dtype=float)
        inside = where >= 0
        present[where[inside]] = ~np.isnan(values[inside])
        nonzero[where[inside]] = np.nan_to_num(values[inside]) != 0
        return present, nonzero

    def _per_cell(self, codes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Persons (or rows) per cell (rows) where each mask (columns) holds; codes -1 are in no cell."""
        inside = codes >= 0
        cells = int(codes.max()) + 1 if inside.any() else 0
        code, masks = codes[inside], masks[inside]
        out = np.zeros((cells, masks.shape[1]))
        if self.persons is None:
            for j in range(masks.shape[1]):
                out[:, j] = np.bincount(code, weights=masks[:, j], minlength=cells)
            return out
        person = self._person_ids[inside]
        for j in range(masks.shape[1]):
            pairs = np.unique(np.stack([code[masks[:, j]], person[masks[:, j]]]), axis=1)
            out[:, j] = np.bincount(pairs[0], minlength=cells)
        return out

    @cached_property
    def _person_ids(self) -> np.ndarray:
        """Each row's person as a number (a row without a person key is a person of its own)."""
        keys = self.persons.reindex(self.index)
        ids = pd.factorize(keys)[0]
        alone = ids < 0
        ids[alone] = ids.max(initial=-1) + 1 + np.arange(int(alone.sum()))
        return ids

    def cell_contributions(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """For the dominance rule: per declared partition into cells of sums, ``(cell, contributions)``, one
        row per person in a cell, one column per summed term (its absolute value times ``scale``; first
        the cell's count, a term of 1). None when the map declares no cells."""
        release = self.declared
        if release is None or not any(cells.summed for cells in release.cells):
            return None
        terms = release.terms if release.terms is not None else pd.DataFrame(index=self.index[:0])
        scale = np.ones(len(terms)) if release.scale is None else release.scale.reindex(terms.index).to_numpy()
        values = np.abs(np.column_stack([np.ones(len(terms)), terms.to_numpy(dtype=float)]) * scale[:, None])
        used = self._align(self.used).reindex(terms.index, fill_value=False).to_numpy()
        out = []
        for cells in release.cells:
            if not cells.summed:
                continue
            codes = cells.codes.reindex(terms.index, fill_value=-1).to_numpy(dtype=int)
            keep = used & (codes >= 0)
            code, value = codes[keep], values[keep]
            if self.persons is not None:  # a person's rows in one cell are one contribution
                person = self._person_ids[self.index.get_indexer(terms.index[keep])]
                summed = pd.DataFrame(value).groupby([code, person]).sum()
                code, value = summed.index.get_level_values(0).to_numpy(), summed.to_numpy()
            out.append((code, value))
        return out

    def _selects(self, node: Node, value: pd.Series, scope: pd.Series, k: int, share: float) -> str | None:
        """What ``value`` does to single out 1 to k-1 persons within ``scope``, or None."""
        scope = scope & self._align(pd.Series(True, index=value.index))
        present = scope & self._align(_finite(value))
        nulled = scope & self._graph.raw_present[id(node)] & ~present
        if 0 < self.count(nulled) < k:
            return f"is missing on fewer than {k} {self.unit} whose values are present"
        if self.count(nulled) and 0 < self.count(present) < k:  # the other side: kept on only a few
            return f"is present on fewer than {k} {self.unit} only"
        values = value.reindex(self.index)[present.to_numpy()]
        if values.empty:
            return None
        counts = values.value_counts(dropna=True, sort=True)
        if len(counts) > 1:
            minority = present & self._align(values != counts.index[0])
            if 0 < self.count(minority) < k:
                return f"takes one value on all but fewer than {k} {self.unit}"
        if _is_number(values) and values.dtype != bool and len(counts) > 2:
            finite = values.astype(float)
            finite = finite[np.isfinite(finite.to_numpy())]
            spread = self._per_person((finite - finite.median()).abs())
            total = float(spread.sum())
            if total > 0 and len(spread) >= k:
                top = float(np.sort(spread.to_numpy())[::-1][: k - 1].sum())
                if top > share * total:
                    return f"puts almost all of its spread on fewer than {k} {self.unit}"
        return None

    # -- the walk --------------------------------------------------------------------------------
    @cached_property
    def _graph(self) -> "_Graph":
        return _Graph.of(self)

    def _per_person(self, values: pd.Series) -> pd.Series:
        if self.persons is None:
            return values
        return values.groupby(self._keys.reindex(values.index).to_numpy(), sort=False).sum()

    def _align(self, mask: pd.Series) -> pd.Series:
        if mask.index is self.index:
            return mask.astype(bool)
        if _same_labels(mask.index, self.index):  # the same rows (a relation's labels: no tuples built)
            return mask.set_axis(self.index).astype(bool)
        return mask.reindex(self.index, fill_value=False).astype(bool)


@dataclass
class _Graph:
    """Per-task facts gathered in one walk: filters, derived values, and the scope of each."""

    selected: pd.Series  # rows passing every filter of the task
    present: pd.Series  # rows whose raw values (every column the task reads) are present
    raw_present: dict[int, pd.Series]  # per node: raw values below it present
    filters: list[tuple[Filter, pd.Series, list[pd.Series]]]  # (filter, rows it drops, scopes)
    derived: list[tuple[Node, list[pd.Series]]]  # (row-wise intermediate, scopes)
    lists: list[Node]  # per-row list constants
    order: list[Node]  # every node of the task, children first

    @classmethod
    def of(cls, d: Disclosure) -> "_Graph":
        everything = pd.Series(True, index=d.index) if d.within is None else d.within.astype(bool)
        values = d._values
        order = list(walk([d.node], stop=_starts_rows))  # a table made by a relation: its rows are judged on their own
        raw_present: dict[int, pd.Series] = {}
        dropped: dict[int, pd.Series] = {}  # id(filter) -> rows it drops from its own input
        lists: list[Node] = []
        for node in order:
            value = values.get(id(node))
            kids = [] if _starts_rows(node) else [c for c in node.children if not isinstance(c, Literal)]
            present = _all(everything, [raw_present[id(c)] for c in kids])
            if _is_raw(node, value):
                present = present & _notna(value).reindex(d.index, fill_value=True).astype(bool)
            raw_present[id(node)] = present
            if isinstance(node, Filter):
                before = _rows_of(values.get(id(node.arg)), d.index)
                after = _rows_of(value, d.index)
                dropped[id(node)] = before & ~after
            if isinstance(node, Elementwise) and node.op in _POSITIONAL and any(
                isinstance(c, Literal) and isinstance(c.value, (list, tuple)) for c in node.args
            ):
                lists.append(node)
        passes = {f: ~rows for f, rows in dropped.items()}
        selected = _all(everything, list(passes.values()))
        present = raw_present[id(d.node)]

        def scope(excluded: frozenset[int]) -> pd.Series:
            return _all(present, [p for f, p in passes.items() if f not in excluded])

        under = _under_masks(d.node)
        filters = [
            (node, dropped[id(node)], [scope(ex | {id(node)}) for ex in under[id(node)]])
            for node in order if isinstance(node, Filter)
        ]
        derived = [
            (node, [scope(ex) for ex in under[id(node)]])
            for node in order
            if (isinstance(node, Elementwise) or _made(d, node)) and isinstance(values.get(id(node)), (pd.Series, pd.DataFrame))
            and not _judged_by_cells(node, d.node)
        ]
        return cls(selected, present, raw_present, filters, derived, lists, order)


def _under_masks(root: Node) -> dict[int, set[frozenset[int]]]:
    """For each node, the sets of filters whose mask it lies under, one set per path from the root."""
    under: dict[int, set[frozenset[int]]] = {id(root): {frozenset()}}
    for node in reversed(list(walk([root], stop=_starts_rows))):  # parents before children
        for context in under.get(id(node), ()):
            for child in () if _starts_rows(node) else node.children:
                inner = context | {id(node)} if isinstance(node, Filter) and child is node.mask else context
                under.setdefault(id(child), set()).add(inner)
    return under


#: Aggregates whose input's rare values are judged cell by cell, or by who holds the extreme.
_CELLS_AND_EXTREMES = {"value_counts", "crosstab", "histogram", "count_below", "set", "unique", "min", "max"}


def _judged_by_cells(node: Node, root: Map) -> bool:
    """The values a count table or an extreme is made of (an input, filtered or not): their rare
    values are judged cell by cell, or by who holds the extreme."""
    if getattr(root, "op", None) not in _CELLS_AND_EXTREMES:
        return False
    for arg in root.args:
        while isinstance(arg, Filter):
            arg = arg.arg
        if arg is node:
            return True
    return False


def _starts_rows(node: Node) -> bool:
    """A node whose rows are new (a fragment, a merge, a concat, a group-by): a row space of its own."""
    return isinstance(node, (Fragment, *NEW_ROWS))


def _made(d: Disclosure, node: Node) -> bool:
    """A column of a table made in the request whose values a group-by computed from the analyst's rows."""
    return isinstance(node, Column) and d.lineage is not None and d.lineage.made(node)


def _is_raw_column(node: Node) -> bool:
    """A column of the fragment as it is (through row filters only)."""
    while isinstance(node, Filter):
        node = node.arg
    if not isinstance(node, Column):
        return False
    table = node.arg
    while isinstance(table, Filter):
        table = table.arg
    return isinstance(table, Fragment)


def _is_raw(node: Node, value: Any) -> bool:
    """Raw values: a selected column, or a fragment that is itself one column."""
    return (isinstance(node, Column) and isinstance(value, (pd.Series, pd.DataFrame))) or (
        isinstance(node, Fragment) and isinstance(value, pd.Series)
    )


def _rows_of(value: Any, index: pd.Index) -> pd.Series:
    if isinstance(value, (pd.Series, pd.DataFrame)):
        return pd.Series(index.isin(value.index), index=index)
    return pd.Series(True, index=index)


def _all(start: pd.Series, masks: list[pd.Series]) -> pd.Series:
    out = start
    for mask in masks:
        out = out & mask
    return out


def _any(start: pd.Series, masks: list[pd.Series]) -> pd.Series:
    out = start
    for mask in masks:
        out = out | mask
    return out


def _moves(value: pd.Series) -> list[pd.Series]:
    """The value changed on every row: a boolean flipped; a number set to a constant far up, then far down
    (``FAR_INTEGERS``, ``FAR_NUMBERS``; same type);
    a date, or a difference of dates, set to the far future and the far past (``FAR``), missing kept.

    Dates move to constants, not by a shift: a shift of ten years changed the comparison ``birth < T``
    only on the rows born within ten years of ``T``, so whether a query that selects nobody was refused
    told whether someone was born in that window (red-teamed: an exact birth date in 13 queries)."""
    if value.dtype == bool or str(value.dtype) == "boolean":
        return [~value]
    if value.dtype.kind in "mM":
        # in microseconds: nanoseconds cannot hold year 1 or 9999 (the SQL engine: the same constants)
        unit = "datetime64[us]" if value.dtype.kind == "M" else "timedelta64[us]"
        far = FAR_DATES if value.dtype.kind == "M" else FAR_DELTAS
        present = value.notna().to_numpy()
        return [pd.Series(np.where(present, np.array(c, dtype=unit), np.array("NaT", dtype=unit)), index=value.index)
                for c in far]
    if _is_number(value) and value.dtype.kind in "iu" or str(value.dtype) in ("Int64", "Int32"):
        # integers stay integers (integer-only operations, & and |, still run); a constant, as for dates
        return [_constant(value, far, "int64") for far in FAR_INTEGERS]
    if _is_number(value):
        return [_constant(value, far, float) for far in FAR_NUMBERS]
    return []


def _constant(value: pd.Series, far: Any, dtype: Any) -> pd.Series:
    """``far`` on every row where ``value`` is present, missing elsewhere (as a move of a missing value)."""
    present = value.notna().to_numpy()
    if not present.all() and dtype == "int64":
        return pd.Series(np.where(present, far, 0), index=value.index).astype("Int64").where(present)
    return pd.Series(np.where(present, far, np.nan), index=value.index).astype(dtype)


def _same_labels(a: pd.Index, b: pd.Index) -> bool:
    """Whether two indexes hold the same labels in the same order, cheaply: rows of a relation carry
    labels made of several levels (``fedmed.server.lineage``), whose ``equals`` would build a tuple a row."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    if isinstance(a, pd.MultiIndex) and isinstance(b, pd.MultiIndex):
        if a.nlevels != b.nlevels:
            return False
        if all(x is y or x.equals(y) for x, y in zip(a.levels, b.levels)):
            return all(np.array_equal(x, y) for x, y in zip(a.codes, b.codes))
    return a.equals(b)


def _differs(before: pd.Series, after: pd.Series) -> pd.Series:
    """Rows where two versions of a term differ (a row present in one only differs; NaN equals NaN).

    Numbers that differ by a few units in the last place differ by rounding
    (``id + y' - y'`` against ``id + y - y``), not by the moved value: 64 ulps
    is far below what a sum can carry of one row, and far above rounding.
    """
    aligned = _same_labels(before.index, after.index)
    index = before.index if aligned else before.index.union(after.index, sort=False)
    a, b = (before, after) if aligned else (before.reindex(index), after.reindex(index))
    if _is_number(a) and _is_number(b):
        x, y = a.to_numpy(dtype=float, na_value=np.nan), b.to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(all="ignore"):
            close = (np.abs(x - y) <= 64 * np.finfo(float).eps * np.maximum(np.abs(x), np.abs(y))) | (x == y)
        same = pd.Series(close | (np.isnan(x) & np.isnan(y)), index=index)
    else:
        same = (a == b).fillna(False).astype(bool) | (a.isna() & b.isna())
    if not aligned:
        same &= index.isin(before.index) == index.isin(after.index)
    return ~same


def _is_number(value: pd.Series) -> bool:
    return value.dtype.kind in "fiub" or str(value.dtype) in ("boolean", "Int64", "Float64", "Int32", "Float32")


def _finite(value: pd.Series) -> pd.Series:
    """Present, and for numbers finite: an infinity the arithmetic made (``log(|x - v|)``, ``1 / (x - v)``) on
    one row marks that row as surely as a missing value does, and vanishes from sums (``exp(-inf) = 0``)."""
    present = value.notna()
    if _is_number(value) and value.dtype != bool and value.dtype.kind in "fc":
        present &= pd.Series(np.isfinite(value.to_numpy(dtype=float, na_value=np.nan)), index=value.index)
    return present


def _notna(value: Any) -> pd.Series:
    if isinstance(value, pd.DataFrame):
        return value.notna().all(axis=1)
    if isinstance(value, pd.Series):
        return value.notna()
    return pd.Series(dtype=bool)


def _nonzero(value: Any) -> pd.Series:
    """Non-zero numbers (True for text and other present values)."""
    if isinstance(value, pd.Series):
        if _is_number(value):
            return pd.Series(np.nan_to_num(value.to_numpy(dtype=float, na_value=0.0)) != 0, index=value.index)
        return value.notna()
    return pd.Series(dtype=bool)
