"""A support agent that drafts replies with Claude and sends only what a human approved in Slack.

    countersign agents add support-bot --categories reply     # prints the agent token once
    export COUNTERSIGN_AGENT_TOKEN=...                        # and ANTHROPIC_API_KEY, optionally
    python examples/support_agent.py --url http://127.0.0.1:3000

For each sample ticket it drafts a reply (canned text when ANTHROPIC_API_KEY is not set), submits
it for review and waits. Approved or edited: it "sends" the approved text (the reviewer's edit wins)
and reports it done. Rejected: it reads the reviewer's reason and drafts once more with it as
feedback. Manual (agent paused, category in manual mode): a human took over, it does nothing.
Countersign unreachable: it stops and sends nothing (fail closed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from countersign_client import (
    CarriedOutElsewhere,
    Client,
    Expired,
    HumanTookOver,
    Rejected,
    StillPending,
    Unreachable,
    Withdrawn,
    require_approval,
)


@dataclass(frozen=True)
class Ticket:
    id: str
    customer: str
    message: str


TICKETS = [
    Ticket("T-1001", "Dana", "My order 1042 arrived broken. Can I get a replacement?"),
    Ticket("T-1002", "Sam", "Where is my parcel? It has been ten days."),
    Ticket("T-1003", "Lee", "Can you promise it arrives before Friday? It is a birthday present."),
]

CANNED = {
    "T-1001": "Hi Dana, I'm sorry the order arrived broken. We'll ship a replacement today at no cost.",
    "T-1002": "Hi Sam, sorry for the wait. Your parcel is with the carrier; I'll send tracking details shortly.",
    "T-1003": "Hi Lee, we guarantee it arrives before Friday!",
}

SYSTEM = (
    "You are a customer support agent for Acme. Write the reply to the customer only: short, kind, "
    "specific, no promises about dates or outcomes you cannot control, no links."
)


class Drafter(Protocol):
    def draft(self, ticket: Ticket, feedback: str | None) -> str: ...

    def close(self) -> None: ...


class CannedDrafter:
    """Fixed drafts, so the example runs without an Anthropic key; feedback yields a cautious redraft."""

    def close(self) -> None:
        pass

    def draft(self, ticket: Ticket, feedback: str | None) -> str:
        if feedback:
            return f"Hi {ticket.customer}, thanks for your patience. We'll keep you updated as soon as we know more."
        return CANNED.get(ticket.id, f"Hi {ticket.customer}, thanks for writing. We're looking into it.")


class ClaudeDrafter:
    """Drafts with the Anthropic Messages API (the SDK honours ANTHROPIC_BASE_URL)."""

    def __init__(self, model: str) -> None:
        import anthropic

        self.model = model
        self.client = anthropic.Anthropic()

    def draft(self, ticket: Ticket, feedback: str | None) -> str:
        prompt = f"Customer {ticket.customer} wrote:\n{ticket.message}"
        if feedback:
            prompt += f"\n\nA reviewer rejected your previous draft with this feedback: {feedback}\nWrite a better one."
        message = self.client.messages.create(
            model=self.model,
            max_tokens=400,
            system=SYSTEM,
            messages=[{"role": "user", "content": prompt}],
        )
        return "".join(block.text for block in message.content if block.type == "text").strip()

    def close(self) -> None:
        self.client.close()


@dataclass
class Outcome:
    ticket: str
    result: str  # sent | edited-and-sent | rejected | human | expired | unanswered | withdrawn | done
    detail: str = ""
    sent: str | None = None
    attempts: int = 1


@dataclass
class Mailbox:
    """Stands in for the email system: what the agent actually sent."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def send(self, ticket: Ticket, text: str) -> None:
        self.sent.append((ticket.id, text))


def run(
    client: Client,
    tickets: list[Ticket],
    drafter: Drafter,
    *,
    mailbox: Mailbox,
    timeout: float = 600.0,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    """Work through the tickets; stop at once (sending nothing more) if Countersign is unreachable."""

    @require_approval(
        client,
        category="reply",
        summary="Reply to {ticket.id} ({ticket.customer})",
        body_param="text",
        context_param="question",
        idempotency_key="reply-{ticket.id}-{attempt}",
        timeout=timeout,
    )
    def send_reply(ticket: Ticket, text: str, question: str, attempt: int) -> str:
        # Runs only after approval, with the approved (possibly edited) text.
        mailbox.send(ticket, text)
        return text

    outcomes = []
    for ticket in tickets:
        feedback: str | None = None
        for attempt in (1, 2):
            proposed = drafter.draft(ticket, feedback)
            say(f"{ticket.id}: submitted draft #{attempt} for review")
            try:
                sent = send_reply(ticket, proposed, ticket.message, attempt)
            except Rejected as rejected:
                feedback = rejected.reason
                say(f"{ticket.id}: rejected by {rejected.by}: {rejected.reason}")
                outcome = Outcome(ticket.id, "rejected", rejected.reason, attempts=attempt)
                continue
            except HumanTookOver as took_over:
                say(f"{ticket.id}: a human took over ({took_over.reason}); doing nothing")
                outcome = Outcome(ticket.id, "human", took_over.reason, attempts=attempt)
            except Expired:
                outcome = Outcome(ticket.id, "expired", attempts=attempt)
            except StillPending:
                say(f"{ticket.id}: no decision in time; draft withdrawn")
                outcome = Outcome(ticket.id, "unanswered", attempts=attempt)
            except Withdrawn:
                outcome = Outcome(ticket.id, "withdrawn", attempts=attempt)
            except CarriedOutElsewhere:
                outcome = Outcome(ticket.id, "done", "already handled", attempts=attempt)
            else:
                result = "sent" if sent == proposed else "edited-and-sent"
                say(f"{ticket.id}: {result}: {sent}")
                outcome = Outcome(ticket.id, result, sent=sent, attempts=attempt)
            break
        outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("COUNTERSIGN_URL", "http://127.0.0.1:3000"))
    parser.add_argument("--token", default=os.environ.get("COUNTERSIGN_AGENT_TOKEN"))
    parser.add_argument("--model", default=os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each decision")
    parser.add_argument("--max-retries", type=int, default=5, help="retries before giving up on Countersign")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("set COUNTERSIGN_AGENT_TOKEN (printed by `countersign agents add`) or pass --token")
    drafter: Drafter = ClaudeDrafter(args.model) if os.environ.get("ANTHROPIC_API_KEY") else CannedDrafter()
    mailbox = Mailbox()
    with Client(args.token, args.url, max_retries=args.max_retries) as client:
        try:
            run(client, TICKETS, drafter, mailbox=mailbox, timeout=args.timeout)
        except Unreachable as error:
            print(f"Countersign is unreachable, nothing more is sent: {error}", file=sys.stderr)
            return 1
        finally:
            drafter.close()
    print(f"{len(mailbox.sent)} replies sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
