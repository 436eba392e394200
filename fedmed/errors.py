"""Every exception FedMed raises, in one hierarchy.

Errors that come from a server carry the server, the fragment and the
operation involved, so that an analyst with twenty data owners can tell at a
glance which one refused what. The wire protocol sends errors by class name
(``ERROR_TYPES``), and the client rebuilds the same class.
"""

from __future__ import annotations


class FedMedError(Exception):
    """Base class of all FedMed errors."""


class DataError(FedMedError, ValueError):
    """The pooled data do not fit a statistic (event codes other than 0/1, other than two groups, an
    empty table): raised on the client, saying what to change. A ``ValueError`` too, as pandas and
    scipy raise for the same cases."""


class ArgumentError(FedMedError, TypeError, ValueError):
    """A function of FedMed was called with an argument it cannot take (a list where a FedData column
    is needed, a negative bin count...): raised before anything is sent, saying what to pass. Both a
    ``TypeError`` and a ``ValueError``, as Python and pandas raise one or the other for such calls."""


class RowLevelError(FedMedError):
    """A pandas call that would show rows (``head``, ``iloc``, iteration, ``to_numpy``...): rows never leave
    a server, so it is refused on the client before anything is sent, saying which aggregate to use instead."""


class ConfigError(FedMedError):
    """A config file or dict is missing, malformed, or names something that does not exist."""


class OperationError(ValueError):
    """Raised by an operation on bad arguments; its message names no data value and is sent to the client."""


class ProtocolError(FedMedError):
    """A request or response does not follow the wire protocol (or its version differs)."""


class ServerError(FedMedError):
    """Something a server reported or caused, with where it happened.

    Attributes
    ----------
    server : str | None
        The server's address (``http://host:port``), ``"local"`` or ``"simulation"``.
    fragment : str | None
        The fragment the failing task ran on.
    operation : str | None
        The readable signature of the task or operation that failed.
    """

    status = 500

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        fragment: str | None = None,
        operation: str | None = None,
        policy: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.server = server
        self.fragment = fragment
        self.operation = operation
        self.policy = policy

    def located(self, server: str | None = None, fragment: str | None = None, operation: str | None = None) -> "ServerError":
        """The same error, with where it happened filled in (known fields are kept)."""
        return type(self)(
            self.message,
            server=self.server or server,
            fragment=self.fragment or fragment,
            operation=self.operation or operation,
            policy=self.policy,
        )

    def __str__(self) -> str:
        where = [
            f"{label} {value!r}"
            for label, value in (
                ("server", self.server),
                ("fragment", self.fragment),
                ("operation", self.operation),
                ("policy", self.policy),
            )
            if value is not None
        ]
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class BadRequest(ServerError):
    """The server could not read the request (malformed body, bad node table)."""

    status = 400


class Unauthorized(ServerError):
    """The server requires a valid bearer token (``fm.Remote(..., token=...)``)."""

    status = 401


class RequestTooLarge(BadRequest):
    """The request body exceeds the server's ``limits.max_body_bytes``."""

    status = 413


class TooExpensive(ServerError):
    """A task or request would need more memory than the server's budget (``limits.memory_bytes``).

    Decided before any work is done, from the sizes the server knows; the
    message names the node that is too big. Ask for less per request:
    fewer columns, fewer tasks, or a filter first.
    """

    status = 413


class UnknownFragment(ServerError):
    """The server holds no fragment of that name."""

    status = 404


class OperationNotAllowed(ServerError):
    """The server's config does not offer this operation."""

    status = 403


class TaskFailed(ServerError):
    """A map task raised while it ran on the server (a missing column, a type error...)."""

    status = 422


class ServerMisconfigured(ServerError):
    """The server's own config does not fit its data (a declared person column the fragment lacks).

    The server's owner must fix it; the server refuses the tasks concerned
    rather than answering them under weaker rules.
    """

    status = 500


class PrivacyError(ServerError):
    """A server's privacy policy suppressed a result or refused a query; ``policy`` says which."""

    status = 403


class PrivacyWarning(UserWarning):
    """A result was released with parts suppressed, or some servers' results were left out."""


class ServerWarning(UserWarning):
    """Some servers failed and were left out of a result (``on_error="skip"``)."""


class InsecureTokenWarning(UserWarning):
    """A bearer token would travel over plain HTTP to another machine, readable by anyone on the way."""


class ServerUnavailable(ServerError):
    """The server could not be reached, or did not answer within the timeout."""

    status = 503


ERROR_TYPES: dict[str, type[ServerError]] = {
    cls.__name__: cls
    for cls in (
        ServerError, BadRequest, RequestTooLarge, TooExpensive, Unauthorized, UnknownFragment,
        OperationNotAllowed, TaskFailed, ServerMisconfigured, PrivacyError, ServerUnavailable,
    )
}
