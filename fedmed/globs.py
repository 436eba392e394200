"""Glob patterns as FedMed's configs write them: ``*`` any text, ``?`` one character, the rest literal.

One helper, shared by the privacy policies' ``filter``/``reject`` patterns
(matched against task signatures) and the config's ``persons`` mapping
(matched against fragment names), so both read a pattern the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression of ``pattern``; match it with ``fullmatch``.

    ``[`` is literal too: signatures are full of brackets, and a character
    class would make ``data['age'].sum()`` match nothing.

    Examples
    --------
    >>> bool(compile_glob("labs*").fullmatch("labs 2024"))
    True
    >>> bool(compile_glob("data['age'].?um()").fullmatch("data['age'].sum()"))
    True
    """
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)
