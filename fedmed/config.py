"""Load and check a FedMed config: which operations exist, which policies apply.

A config is YAML (or an already-loaded dict) with two main keys::

    methods:
      add: fedmed.ops.binary.add                      # elementwise: name -> import path
      sum: {map: fedmed.ops.private.sum,              # aggregate: server map ...
            reduce: fedmed.ops.public.sum}            # ... and client reduce
    privacy:
      - {policy: fedmed.privacy.SomePolicy, params: {k: 5}}

and, for a server, optional ``auth``, ``limits`` and ``persons`` (which
column of a fragment identifies a person, so that privacy rules count
persons rather than rows: ``persons: {"labs*": patient}``).

A server offers exactly the operations its own config names; a client uses
its config to know which methods ``FedData`` has and how to reduce them.
Every problem is reported at load time with the key that is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .errors import ConfigError
from .globs import compile_glob
from .privacy.base import Scoped
from .auth import load_auth

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")

#: Request limits a server enforces, and their defaults (``memory_bytes`` None: derived from the
#: machine's memory, see ``fedmed.server.memory.machine_budget``).
LIMITS: dict[str, int | None] = {"max_body_bytes": 4 * 1024 * 1024, "max_nodes": 20_000, "memory_bytes": None}


@dataclass(frozen=True)
class Aggregate:
    """An aggregate: ``map`` runs on each fragment, ``reduce`` pools the results."""

    name: str
    map: Callable[..., Any]
    reduce: Callable[..., Any]


@dataclass(frozen=True)
class Config:
    """A loaded config. Build it with :func:`load_config`."""

    elementwise: Mapping[str, Callable[..., Any]]
    aggregates: Mapping[str, Aggregate]
    privacy: tuple[Any, ...] = ()  # Scoped policies, in config order
    origin: str = "<dict>"
    auth: Any = None  # an Authenticator, or None: no authentication
    limits: Mapping[str, int | None] = field(default_factory=lambda: dict(LIMITS))
    persons: Mapping[str, str] = field(default_factory=dict)  # fragment-name glob -> person column, in order
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def without_privacy(self) -> "Config":
        """The same operations with no privacy policies (for exact, in-process use)."""
        return dataclasses.replace(self, privacy=(), auth=None)

    def person_column(self, fragment: str) -> str | None:
        """The column identifying a person in ``fragment``: the first ``persons`` glob that matches it.

        ``None`` when no glob matches: privacy rules then count rows, and a
        person with several rows counts several times.

        Examples
        --------
        >>> cfg = load_config({"methods": {"add": "fedmed.ops.binary.add"},
        ...                    "persons": {"labs*": "patient", "cohort": "id"}})
        >>> cfg.person_column("labs 2024"), cfg.person_column("cohort"), cfg.person_column("cohort 2")
        ('patient', 'id', None)
        """
        return next((column for glob, column in self.persons.items() if compile_glob(glob).fullmatch(fragment)), None)

    def with_persons(self, persons: Mapping[str, str], origin: str = "<dict>") -> "Config":
        """The same config with ``persons`` declared before its own (they win where both match a fragment).

        Checked like the config's own ``persons`` (``fedmed serve --person`` uses it).
        """
        added = _persons(persons, origin)
        return dataclasses.replace(self, persons={**added, **{g: c for g, c in self.persons.items() if g not in added}})


def load_config(config: "str | Path | Mapping[str, Any] | Config | None" = None) -> Config:
    """Load a config from a YAML path, a dict, or ``None`` for FedMed's default.

    Examples
    --------
    >>> cfg = load_config({"methods": {"add": "fedmed.ops.binary.add"}, "privacy": []})
    >>> sorted(cfg.elementwise)
    ['add']
    """
    if isinstance(config, Config):
        return config
    if config is None:
        return _default()
    if isinstance(config, (str, Path)):
        origin = str(config)
        raw = _read_yaml(Path(config))
    elif isinstance(config, Mapping):
        origin, raw = "<dict>", config
    else:
        raise ConfigError(f"config must be a path, a dict or None, not {type(config).__name__}")
    return _build(raw, origin)


@functools.lru_cache(maxsize=1)
def _default() -> Config:
    # parsed once per process: every FedData() without a config would re-read it
    return _build(_read_yaml(DEFAULT_CONFIG), str(DEFAULT_CONFIG))


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _build(raw: Any, origin: str) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: the config must be a mapping with 'methods' and 'privacy'")
    unknown = set(raw) - {"methods", "privacy", "auth", "limits", "persons"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {sorted(unknown)}")
    methods = raw.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ConfigError(f"{origin}: 'methods' must be a non-empty mapping of operation names")
    elementwise: dict[str, Callable[..., Any]] = {}
    aggregates: dict[str, Aggregate] = {}
    for name, spec in methods.items():
        where = f"{origin}: methods.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{where}: an operation name must be a Python identifier")
        if isinstance(spec, str):
            elementwise[name] = resolve(spec, where)
        elif isinstance(spec, Mapping) and set(spec) == {"map", "reduce"}:
            aggregates[name] = Aggregate(
                name, resolve(spec["map"], f"{where}.map"), resolve(spec["reduce"], f"{where}.reduce")
            )
        else:
            raise ConfigError(
                f"{where}: expected an import path (elementwise) or {{map: path, reduce: path}} (aggregate)"
            )
    privacy = _build_policies(raw.get("privacy", []), origin)
    return Config(
        elementwise, aggregates, privacy, origin=origin, raw=raw,
        auth=load_auth(raw.get("auth"), origin), limits=_limits(raw.get("limits"), origin),
        persons=_persons(raw.get("persons"), origin),
    )


def _limits(raw: Any, origin: str) -> dict[str, int | None]:
    raw = raw or {}
    if not isinstance(raw, Mapping) or not set(raw) <= set(LIMITS):
        raise ConfigError(f"{origin}: limits: expected a mapping with keys among {sorted(LIMITS)}")
    out = dict(LIMITS)
    for key, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{origin}: limits.{key}: expected a positive integer")
        out[key] = value
    return out


def _persons(raw: Any, origin: str) -> dict[str, str]:
    """``persons``: fragment-name globs to the column identifying a person, in the order written."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{origin}: persons: expected a mapping of fragment-name globs to person columns, "
            f'such as "labs*": patient, not a {type(raw).__name__}'
        )
    out = {}
    for glob, column in raw.items():
        if not isinstance(glob, str) or not glob:
            raise ConfigError(f"{origin}: persons: {glob!r} is not a fragment name or glob (quote it in YAML)")
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(
                f"{origin}: persons[{glob!r}]: expected the name of the column that identifies a person, got {column!r}"
            )
        out[glob] = column
    return out


def _build_policies(entries: Any, origin: str) -> tuple[Any, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: 'privacy' must be a list (empty for exact results)")
    policies = []
    for i, entry in enumerate(entries):
        where = f"{origin}: privacy[{i}]"
        if not isinstance(entry, Mapping) or "policy" not in entry:
            raise ConfigError(f"{where}: expected {{policy: import.path, params: {{...}}}}")
        extra = set(entry) - {"policy", "params", "filter", "reject"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        cls = resolve(entry["policy"], f"{where}.policy")
        params = entry.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}.params: must be a mapping")
        try:
            policy = cls(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.params: {exc}") from None
        patterns = {}
        for key in ("filter", "reject"):
            value = entry.get(key) or []
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a glob pattern or a list of them")
            patterns[key] = value
        policies.append(Scoped(policy, **patterns))
    return tuple(policies)


def resolve(path: Any, where: str) -> Any:
    """Import ``package.module.attribute`` named by a config (never by a request)."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{where}: expected an import path like 'package.module.name', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None
