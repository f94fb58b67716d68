"""Everything this package raises; catch `CountersignError` to fail closed on all of it.

CountersignError                      anything raised here
├── Unreachable                       no answer from Countersign after the retries
├── ApiError                          Countersign answered with an error   code                 HTTP
│   ├── BadRequest                    malformed request                    bad_request          400
│   ├── Unauthorized                  no or unknown agent token            unauthorized         401
│   ├── Forbidden                     category not allowed for the agent   forbidden            403
│   ├── NotFound                      no such draft, or not this agent's   not_found            404
│   ├── Conflict                      wrong state, or key still in flight  conflict             409
│   ├── PayloadTooLarge                                                    too_large            413
│   ├── Invalid                       valid JSON, invalid values           invalid              422
│   │   └── IdempotencyKeyReused      same key, different request          idempotency_key_reused
│   ├── RateLimited                   over the agent's request rate        rate_limited         429
│   └── Unavailable                   control state unreadable             unavailable          503
├── DoNotAct                          a human did not approve this action for you to carry out
│   ├── Rejected                      a reviewer said no; `.reason` is their feedback
│   ├── HumanTookOver                 routed to people (paused, manual mode, over cap, offline)
│   ├── Expired                       nobody decided in time
│   ├── Withdrawn                     the draft was cancelled
│   ├── StillPending                  no decision within the wait (the draft is withdrawn)
│   └── CarriedOutElsewhere           approved, but Countersign's executor (or an earlier run) acts
└── WebhookVerificationError          a webhook's signature or timestamp is not valid
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from countersign_client.models import Draft


class CountersignError(Exception):
    """Base of every error of the Countersign client."""


class Unreachable(CountersignError):
    """Countersign could not be reached (or did not answer) after the retries: nothing may run."""


class ApiError(CountersignError):
    """An error answer of the agent API: `{"error": {"code", "message", "field"?}}`."""

    status = 0
    code = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.field = field
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "too_large"


class Invalid(ApiError):
    status, code = 422, "invalid"


class IdempotencyKeyReused(Invalid):
    code = "idempotency_key_reused"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        Invalid,
        IdempotencyKeyReused,
        RateLimited,
        Unavailable,
    )
}
_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        Invalid,
        RateLimited,
        Unavailable,
    )
}


def api_error(
    status: int, code: str | None, message: str, field: str | None, retry_after: float | None
) -> ApiError:
    """The typed error for an error answer: by its code first, by its HTTP status otherwise."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or ApiError
    return cls(message, status=status, code=code or cls.code, field=field, retry_after=retry_after)


class DoNotAct(CountersignError):
    """Countersign's answer means the caller must not carry out the action; `draft` says why."""

    def __init__(self, message: str, draft: Draft) -> None:
        super().__init__(message)
        self.draft = draft


class Rejected(DoNotAct):
    """A reviewer rejected the draft; `reason` is their feedback, meant to be read by the agent."""

    def __init__(self, draft: Draft) -> None:
        decision = draft.rejection
        self.reason = decision.reason if decision and decision.reason else ""
        self.by = decision.by if decision else None
        super().__init__(f"rejected by {self.by or 'a reviewer'}: {self.reason or '(no reason)'}", draft)


class HumanTookOver(DoNotAct):
    """The draft was routed to people (`reason`: agent_paused, category_manual, over_cap,
    agent_offline); a human handles it, so the agent does nothing."""

    def __init__(self, draft: Draft, reason: str | None = None) -> None:
        self.reason = reason or draft.reason or "manual"
        super().__init__(f"a human took over ({self.reason}); do nothing", draft)


class Expired(DoNotAct):
    def __init__(self, draft: Draft) -> None:
        super().__init__("nobody decided before the draft expired", draft)


class Withdrawn(DoNotAct):
    def __init__(self, draft: Draft) -> None:
        super().__init__("the draft was withdrawn", draft)


class StillPending(DoNotAct):
    def __init__(self, draft: Draft, waited: float) -> None:
        self.waited = waited
        super().__init__(f"no decision after {waited:g} s", draft)


class CarriedOutElsewhere(DoNotAct):
    """Approved, but not for the caller to carry out: the category has an executor (Countersign acts
    itself), or the draft was already reported done, e.g. by an earlier run with the same key."""

    def __init__(self, draft: Draft) -> None:
        super().__init__(f"approved and {draft.status}; carried out elsewhere, do nothing", draft)


class WebhookVerificationError(CountersignError):
    """A webhook failed verification: missing headers, bad signature or a stale timestamp."""
