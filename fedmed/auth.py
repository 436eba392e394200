"""Bearer-token authentication: a server knows only the SHA-256 digests of its tokens.

The config holds ``auth: {tokens: {name: sha256-hex}}`` (and/or
``tokens_env: VAR`` naming an environment variable with
``name:sha256-hex,name2:sha256-hex``), and optionally ``admins: [name]``:
the tokens that may see who asked what on the status page. A client sends
``Authorization: Bearer <token>``; the server hashes it and compares it
with every known digest with ``hmac.compare_digest``, so neither the
comparison nor the search order reveals how much of a token was right. The
token's name becomes the client's identity (for logs and privacy budgets).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any, Iterable, Mapping

from .errors import ConfigError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest(token: str) -> str:
    """The SHA-256 hex digest a config stores for ``token``.

    Examples
    --------
    >>> digest("s3cret")[:16]
    '1ec1c26b50d5d3c5'
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Authenticator:
    """Checks bearer tokens against known digests."""

    def __init__(self, tokens: Mapping[str, str], admins: Iterable[str] = ()) -> None:
        self._tokens = {name: bytes.fromhex(hexdigest) for name, hexdigest in tokens.items()}
        self.admins = frozenset(admins)

    def is_admin(self, name: str | None) -> bool:
        """Whether the token ``name`` may see other clients' identities and queries."""
        return name in self.admins

    def identify(self, header: str | None) -> str | None:
        """The token's name for an ``Authorization`` header value, or None."""
        if not header or not header.startswith("Bearer "):
            return None
        presented = hashlib.sha256(header[len("Bearer "):].strip().encode("utf-8")).digest()
        found = None
        for name, known in self._tokens.items():  # no early exit: the same work for every header
            if hmac.compare_digest(presented, known):
                found = name
        return found


def load_auth(raw: Any, origin: str) -> Authenticator | None:
    """The authenticator a config's ``auth`` section describes, or None when there is none."""
    if raw is None:
        return None
    where = f"{origin}: auth"
    if not isinstance(raw, Mapping) or not set(raw) <= {"tokens", "tokens_env", "admins"}:
        raise ConfigError(f"{where}: expected {{tokens: {{name: sha256-hex}}, tokens_env: VARIABLE, admins: [name]}}")
    tokens = dict(raw.get("tokens") or {})
    variable = raw.get("tokens_env")
    if variable:
        for item in filter(None, os.environ.get(str(variable), "").split(",")):
            name, _, hexdigest = item.strip().partition(":")
            tokens[name] = hexdigest
    for name, hexdigest in tokens.items():
        if not isinstance(hexdigest, str) or not _HEX64.match(hexdigest):
            raise ConfigError(f"{where}.tokens.{name}: expected the 64-character SHA-256 hex digest of the token")
    if not tokens:
        raise ConfigError(f"{where}: no tokens (an empty list would lock everyone out)")
    admins = raw.get("admins") or []
    if not isinstance(admins, list) or not all(isinstance(a, str) for a in admins):
        raise ConfigError(f"{where}.admins: expected a list of token names")
    unknown = [a for a in admins if a not in tokens]
    if unknown:
        raise ConfigError(f"{where}.admins: {unknown} are not names of tokens")
    return Authenticator(tokens, admins)
