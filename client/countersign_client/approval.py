"""`require_approval`: a function that runs only after a human approved what it is about to do.

The call's arguments become a draft; the function then runs with the reviewer-approved text and
amount (edited or not) and its outcome is reported back. Any other outcome raises a `DoNotAct`
error, and any failure to reach Countersign raises before the function could run (fail closed).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar, cast

from countersign_client.client import AsyncClient, Client
from countersign_client.errors import (
    CarriedOutElsewhere,
    Conflict,
    CountersignError,
    Expired,
    HumanTookOver,
    Rejected,
    StillPending,
    Withdrawn,
)
from countersign_client.models import AgentStatus, Draft

log = logging.getLogger("countersign_client")

F = TypeVar("F", bound=Callable[..., Any])


def check_outcome(draft: Draft, *, waited: float = 0.0) -> Draft:
    """The draft itself when it is approved for the caller to carry out; otherwise the `DoNotAct`
    error that says why not."""
    if draft.status == "approved" and draft.execution.status == "none":
        return draft
    if draft.status in ("approved", "executed", "failed", "needs_reconciliation"):
        raise CarriedOutElsewhere(draft)
    if draft.status == "rejected":
        raise Rejected(draft)
    if draft.status in ("manual", "handled"):
        raise HumanTookOver(draft)
    if draft.status == "expired":
        raise Expired(draft)
    if draft.status == "cancelled":
        raise Withdrawn(draft)
    raise StillPending(draft, waited)


def held_by(status: AgentStatus, draft: Draft) -> str | None:
    """Why an approved action must still not run now: the brake was pulled (or the category switched
    to manual) after the approval. Countersign's own executor holds in the same cases."""
    if status.state == "paused":
        return "agent_paused"
    usage = status.categories.get(draft.category)
    if usage is not None and usage.mode == "manual":
        return "category_manual"
    return None


class _Gate:
    """How one decorated function's arguments map to a draft, and the approved draft back to them."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        category: str,
        summary: str,
        body_param: str,
        context_param: str | None,
        amount_param: str | None,
        payload_param: str | None,
        requested_by_param: str | None,
        currency: str | None,
        idempotency_key: str | None,
        timeout: float,
    ) -> None:
        self.signature = inspect.signature(fn)
        for param in (body_param, context_param, amount_param, payload_param, requested_by_param):
            if param is not None and param not in self.signature.parameters:
                raise TypeError(f"{fn.__qualname__} has no parameter {param!r} for require_approval")
        self.name = fn.__qualname__
        self.category = category
        self.summary = summary
        self.body_param = body_param
        self.context_param = context_param
        self.amount_param = amount_param
        self.payload_param = payload_param
        self.requested_by_param = requested_by_param
        self.currency = currency
        self.idempotency_key = idempotency_key
        self.timeout = timeout

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound

    def _format(self, template: str, bound: inspect.BoundArguments) -> str:
        try:
            return template.format_map(bound.arguments)
        except (KeyError, IndexError, AttributeError) as exc:
            raise TypeError(f"cannot fill {template!r} from the arguments of {self.name}: {exc}") from None

    def draft_fields(self, bound: inspect.BoundArguments) -> dict[str, Any]:
        def arg(name: str | None) -> Any:
            return None if name is None else bound.arguments.get(name)

        return {
            "category": self.category,
            "summary": self._format(self.summary, bound),
            "body": str(bound.arguments[self.body_param]),
            "context": arg(self.context_param),
            "amount": arg(self.amount_param),
            "currency": self.currency,
            "payload": arg(self.payload_param),
            "requested_by": arg(self.requested_by_param),
            "idempotency_key": None
            if self.idempotency_key is None
            else self._format(self.idempotency_key, bound),
        }

    def apply(self, bound: inspect.BoundArguments, draft: Draft) -> None:
        """Put the approved text and amount in place of what the agent proposed."""
        bound.arguments[self.body_param] = draft.final_body
        if self.amount_param is not None and draft.amount is not None:
            proposed = bound.arguments.get(self.amount_param)
            approved: str | Decimal = draft.amount
            if isinstance(proposed, str):
                approved = format(draft.amount, "f")
            bound.arguments[self.amount_param] = approved


def _failure_detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def require_approval(
    client: Client | AsyncClient,
    *,
    category: str,
    summary: str,
    body_param: str = "body",
    context_param: str | None = None,
    amount_param: str | None = None,
    payload_param: str | None = None,
    requested_by_param: str | None = None,
    currency: str | None = None,
    idempotency_key: str | None = None,
    timeout: float = 3600.0,
) -> Callable[[F], F]:
    """Run the decorated function (sync with a `Client`, async with an `AsyncClient`) only after a
    human approves the draft its arguments describe.

    - `summary` and `idempotency_key` are `str.format` templates over the call's arguments, e.g.
      `"Reply to ticket {ticket_id}"`; a key like `"reply-{ticket_id}"` lets a restarted agent
      find its draft again instead of submitting a second one.
    - `body_param` names the parameter holding the text to review: the function receives the
      approved text there (the reviewer's edit, when there is one). `amount_param` likewise.
    - The function runs only for an approved draft, and only while the agent is not paused and
      the category not in manual mode (checked again after the approval: a brake pulled in between
      wins, and the draft is reported as not carried out). Its result or exception is reported to
      Countersign (`done`).
    - Otherwise it raises a `DoNotAct` error: `Rejected` (with the reviewer's `reason`),
      `HumanTookOver`, `Expired`, `Withdrawn`, `StillPending` (after `timeout` seconds the draft is
      withdrawn), `CarriedOutElsewhere`. Countersign unreachable: `Unreachable`, before any run.
    """

    def decorate(fn: F) -> F:
        gate = _Gate(
            fn,
            category=category,
            summary=summary,
            body_param=body_param,
            context_param=context_param,
            amount_param=amount_param,
            payload_param=payload_param,
            requested_by_param=requested_by_param,
            currency=currency,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        if inspect.iscoroutinefunction(fn):
            if not isinstance(client, AsyncClient):
                raise TypeError(f"{fn.__qualname__} is async: require_approval needs an AsyncClient")
            return cast(F, _async_wrapper(fn, gate, client))
        if not isinstance(client, Client):
            raise TypeError(f"{fn.__qualname__} is not async: require_approval needs a Client")
        return cast(F, _sync_wrapper(fn, gate, client))

    return decorate


def _sync_wrapper(fn: Callable[..., Any], gate: _Gate, client: Client) -> Callable[..., Any]:
    def decided(draft_id: str) -> Draft:
        draft = client.wait(draft_id, gate.timeout)
        if draft.status == "pending":
            # Nobody is waiting for it any more: withdraw it, unless a decision won the race.
            try:
                withdrawn = client.cancel(draft_id)
            except Conflict:
                draft = client.get(draft_id)
            else:
                raise StillPending(withdrawn, gate.timeout)
        return check_outcome(draft, waited=gate.timeout)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = gate.bind(args, kwargs)
        submission = client.submit(**gate.draft_fields(bound))
        draft = decided(submission.id)
        held = held_by(client.me(), draft)
        if held:
            try:
                client.done(draft.id, ok=False, detail=f"not carried out: {held} after approval")
            except CountersignError as report_error:
                _log_report_failure(draft.id, report_error)
            raise HumanTookOver(draft, held)
        gate.apply(bound, draft)
        try:
            result = fn(*bound.args, **bound.kwargs)
        except Exception as exc:
            try:
                client.done(draft.id, ok=False, detail=_failure_detail(exc))
            except CountersignError as report_error:
                _log_report_failure(draft.id, report_error)
            raise
        try:
            client.done(draft.id, ok=True)
        except CountersignError as report_error:
            _log_report_failure(draft.id, report_error)
        return result

    return wrapper


def _async_wrapper(fn: Callable[..., Any], gate: _Gate, client: AsyncClient) -> Callable[..., Any]:
    async def decided(draft_id: str) -> Draft:
        draft = await client.wait(draft_id, gate.timeout)
        if draft.status == "pending":
            try:
                withdrawn = await client.cancel(draft_id)
            except Conflict:
                draft = await client.get(draft_id)
            else:
                raise StillPending(withdrawn, gate.timeout)
        return check_outcome(draft, waited=gate.timeout)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = gate.bind(args, kwargs)
        submission = await client.submit(**gate.draft_fields(bound))
        draft = await decided(submission.id)
        held = held_by(await client.me(), draft)
        if held:
            try:
                await client.done(draft.id, ok=False, detail=f"not carried out: {held} after approval")
            except CountersignError as report_error:
                _log_report_failure(draft.id, report_error)
            raise HumanTookOver(draft, held)
        gate.apply(bound, draft)
        try:
            result = await fn(*bound.args, **bound.kwargs)
        except Exception as exc:
            try:
                await client.done(draft.id, ok=False, detail=_failure_detail(exc))
            except CountersignError as report_error:
                _log_report_failure(draft.id, report_error)
            raise
        try:
            await client.done(draft.id, ok=True)
        except CountersignError as report_error:
            _log_report_failure(draft.id, report_error)
        return result

    return wrapper


def _log_report_failure(draft_id: str, error: CountersignError) -> None:
    # The action already ran: raising now would invite the caller to run it again.
    log.warning("draft %s: the action ran but reporting it to Countersign failed: %s", draft_id, error)
