"""The kill switch and its relatives: pause/resume agents, manual mode, cap overrides.

Pulling the brake is easy (any reviewer); releasing it is not (admins only). Every flip is
committed, audited and announced before the command answers.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import SQLAlchemyError

from bot import audit
from bot.control.overview import AgentRow, CategoryRow, Home, Overview
from bot.control.switches import Refused, Switches
from bot.runtime import Runtime
from bot.slack import Directory
from storage.db import transaction

__all__ = ["HELP", "AgentRow", "CategoryRow", "Control", "Home", "Refused"]

log = logging.getLogger(__name__)


HELP = """*`/agent` — Countersign controls*
• `/agent status` — agents, categories, pending work
• `/agent pause <agent|all> [reason]` — stop an agent now (any reviewer)
• `/agent resume <agent|all> [reason]` — let it work again (admins)
• `/agent manual <category> [duration, e.g. 2h]` — route a category to humans (any reviewer)
• `/agent review <category> [reason]` — back to review mode (admins)
• `/agent caps` — today's cap usage
• `/agent cap <category> [count=N] [amount=X]` — change today's caps (admins)
• `/agent help` — this text"""


@dataclass
class Control(Switches, Overview):
    rt: Runtime
    directory: Directory

    async def _member(self, user: str) -> bool:
        """A reviewer (any category, or its user group) or an admin, and a full, active account."""
        try:
            who = await self.directory.reviewer(user)
        except SlackApiError:
            raise Refused("Slack could not confirm who you are; nothing was changed.") from None
        if who.deleted or who.is_bot or who.is_guest:
            return False
        if user in self.reviewers():
            return True
        try:
            for category in self.rt.config.categories.values():
                if category.reviewer_group and user in await self.directory.reviewers(category):
                    return True
        except SlackApiError:
            raise Refused("Slack could not list a reviewer group; nothing was changed.") from None
        return False

    async def home(self, *, user: str) -> Home:
        """App Home: to reviewers (user groups included) and admins what `/agent status` shows them,
        with Pause buttons; to anyone else, nothing of the state."""
        try:
            member = await self._member(user)
        except Refused:
            member = False
        if not member:
            return Home.closed_to(user, self.rt.clock())
        return await asyncio.to_thread(self.snapshot, user, member=True)

    async def run(self, *, user: str, text: str) -> str:
        """Run one `/agent` subcommand for `user` and return the private answer."""
        try:
            return await self._run(user=user, text=text)
        except SQLAlchemyError:
            log.exception("control state unreadable")
            return (
                ":warning: Countersign cannot read or write its control state right now; the change"
                " was most likely not made (`/agent status` shows where things stand)."
            )

    async def _run(self, *, user: str, text: str) -> str:
        if "\x00" in text:
            # PostgreSQL text cannot hold NUL: refuse here rather than fail in the database.
            return "The command contains a NUL character; nothing was changed."
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        if not words or words[0] in ("help", "-h", "--help"):
            return HELP
        verb, args = words[0].lower(), words[1:]
        try:
            if verb in ("status", "caps"):
                if not await self._member(user):
                    raise Refused("Only reviewers and admins can see Countersign's state.")
                return await asyncio.to_thread(self.status if verb == "status" else self.caps_text)
            if verb in ("pause", "manual"):
                if not await self._member(user):
                    raise Refused("Only reviewers and admins can pull the brake.")
                if verb == "pause":
                    return await asyncio.to_thread(self.pause, user, args)
                return await asyncio.to_thread(self.manual, user, args)
            if verb in ("resume", "review", "cap"):
                if user not in self.rt.config.admins or not await self._member(user):
                    raise Refused(
                        f"Only admins can {verb}: releasing the brake and raising caps needs an admin."
                    )
                handler = {"resume": self.resume, "review": self.review, "cap": self.set_cap}[verb]
                return await asyncio.to_thread(handler, user, args)
        except Refused as refused:
            await asyncio.to_thread(self._audit_denied, user, verb, str(refused))
            return f":no_entry: {refused}"
        return f"Unknown command `{verb[:30]}`.\n\n{HELP}"

    def _audit_denied(self, user: str, verb: str, why: str) -> None:
        with transaction(self.rt.engine, audited=True) as session:
            audit.append(
                session,
                at=self.rt.clock(),
                actor=f"slack:{user}",
                action=f"control.{verb}_denied",
                subject="control",
                after={"why": why},
                outcome="denied",
            )
