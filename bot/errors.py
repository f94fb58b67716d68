"""The errors use-cases raise; the HTTP edge maps each to a status and a stable code.

    CountersignError                  code              HTTP
    ├── BadRequest                    bad_request       400  malformed JSON, missing key
    ├── Unauthorized                  unauthorized      401  no or unknown agent token
    ├── Forbidden                     forbidden         403  category not allowed for the agent
    ├── NotFound                      not_found         404  missing, or another agent's
    ├── Conflict                      conflict          409  wrong state, request in flight
    ├── PayloadTooLarge               too_large         413
    ├── Invalid                       invalid           422  valid JSON, invalid values
    │   └── IdempotencyMismatch       idempotency_key_reused
    ├── RateLimited                   rate_limited      429  (carries retry_after)
    └── Unavailable                   unavailable       503  control state unreadable: fail closed

Decisions from Slack (approve, reject, …) that lose a race or are not allowed raise
DecisionRefused with a message meant for the clicking user.
"""

from __future__ import annotations


class CountersignError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.code, self.message, self.field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, dict[str, str | None]]:
    """The agent API's error shape; `field` is always there, null when no one field is at fault."""
    return {"error": {"code": code, "message": message, "field": field or None}}


class BadRequest(CountersignError):
    status = 400
    code = "bad_request"


class Unauthorized(CountersignError):
    status = 401
    code = "unauthorized"


class Forbidden(CountersignError):
    status = 403
    code = "forbidden"


class NotFound(CountersignError):
    status = 404
    code = "not_found"


class Conflict(CountersignError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CountersignError):
    status = 413
    code = "too_large"


class Invalid(CountersignError):
    status = 422
    code = "invalid"


class IdempotencyMismatch(Invalid):
    code = "idempotency_key_reused"


class RateLimited(CountersignError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CountersignError):
    status = 503
    code = "unavailable"


class DecisionRefused(Exception):
    """A reviewer's click that changes nothing; the message is shown to them privately."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CapRefused(DecisionRefused):
    """An approval that would exceed a daily cap: the draft stays pending, its card is refreshed."""
