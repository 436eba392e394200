"""FedMed: privacy-aware federated statistics with lazy, batched evaluation.

Data owners run a ``Server`` holding private fragments; analysts combine
fragments from many servers into one ``FedData`` and write pandas-like code
on it. Nothing is sent until a value is needed; then every map task for a
server travels in one request per round, and only aggregates come back.

>>> import fedmed as fm
>>> data = fm.FedData([fm.Local([1, 2, 3]), fm.Local([4, 5])])
>>> float(data.sum() / data.len())
3.0
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .backend import Local, Remote, Simulation
from .config import Config, load_config
from .errors import (
    ArgumentError,
    BadRequest,
    ConfigError,
    DataError,
    FedMedError,
    InsecureTokenWarning,
    OperationNotAllowed,
    PrivacyError,
    PrivacyWarning,
    ProtocolError,
    RowLevelError,
    ServerError,
    ServerMisconfigured,
    ServerUnavailable,
    ServerWarning,
    TaskFailed,
    TooExpensive,
    Unauthorized,
    UnknownFragment,
)
from .expr.optimize import OptFlags
from .lazy import FedData, LazyResult, compute, explain
from .options import options
from . import fragments, privacy, stats
from .server import Server
from .api.series import to_datetime
from .api.tables import concat, merge

try:
    __version__ = _version("fedmed")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "FedData", "LazyResult", "compute", "explain", "concat", "merge", "to_datetime", "OptFlags", "stats", "privacy", "options",
    "Remote", "Local", "Simulation", "Server",
    "Config", "load_config",
    "FedMedError", "ArgumentError", "DataError", "RowLevelError", "ConfigError", "ProtocolError", "ServerError", "BadRequest",
    "UnknownFragment", "OperationNotAllowed", "TaskFailed", "TooExpensive", "ServerMisconfigured", "ServerUnavailable", "PrivacyError", "PrivacyWarning",
    "ServerWarning", "Unauthorized", "InsecureTokenWarning",
]
