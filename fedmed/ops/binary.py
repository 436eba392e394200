"""Elementwise operations: row by row, on the server, never exposed to the client.

Each takes pandas Series (or scalars) and returns a Series of the same rows,
so every operation is vectorised. Python's operators already do the right
thing on Series, including pandas' alignment and missing-value rules.
"""

from __future__ import annotations

import operator

add = operator.add
sub = operator.sub
mul = operator.mul
truediv = operator.truediv
floordiv = operator.floordiv
mod = operator.mod
pow = operator.pow
neg = operator.neg
abs = operator.abs
eq = operator.eq
ne = operator.ne
lt = operator.lt
le = operator.le
gt = operator.gt
ge = operator.ge
and_ = operator.and_
or_ = operator.or_
invert = operator.invert
