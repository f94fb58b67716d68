"""Checking a submission before any database work: the config, the agent's registration, the
amount and callback URL (`check`), then the risk rules (`Checked.prepared` takes their findings)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from bot import audit, netguard, policy
from bot.errors import Forbidden, Invalid
from bot.risk import Finding, RiskRules, risk_level
from bot.risk.workers import RuleJob, run_job
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import Category, currency_exponent
from storage.tables import Agent


@dataclass(frozen=True)
class Prepared:
    """A submission that passed every check that needs no database."""

    agent_id: int
    agent_name: str
    draft: DraftIn
    category: Category
    amount: Decimal | None
    currency: str | None
    risk: dict[str, Any]
    key: str | None
    fingerprint: str
    base_url: str
    # The bearer token's hash (the server always sets it; its agent may come from the token
    # cache): the transaction that stores the draft checks the token is still live. None for the
    # CLI and tests, which authenticate in the same breath.
    token_hash: str | None = None


def request_fingerprint(draft: DraftIn) -> str:
    """Hash of the request as parsed, so the same request spelled differently is still the same."""
    fields = draft.model_dump(exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(audit.canonical(fields).encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def risk_rules(category: Category) -> RiskRules:
    """The rules' settings for a category (built once per category: categories are frozen)."""
    return RiskRules(
        money=category.money,
        max_amount=category.max_amount,
        currency=category.currency,
        allowed_link_domains=category.allowed_link_domains,
        forbidden_phrases=category.forbidden_phrases,
    )


def agent_categories(agent: Agent) -> list[str]:
    return [name for name in agent.categories.split(",") if name]


@dataclass(frozen=True)
class Checked:
    """A submission that passed every check but the risk rules (which may run in a worker)."""

    agent: Agent
    draft: DraftIn
    category: Category
    amount: Decimal | None
    currency: str | None

    def rule_job(self) -> RuleJob:
        return RuleJob(
            rules=risk_rules(self.category),
            body=self.draft.body,
            context=self.draft.context,
            amount=self.amount,
            currency=self.currency,
        )

    def prepared(
        self, findings: list[Finding], *, key: str | None, base_url: str, token_hash: str | None = None
    ) -> Prepared:
        risk = {
            "level": risk_level(findings),
            "findings": [finding.to_dict() for finding in findings],
            "ai": {"status": "pending" if self.category.ai_review else "off", "note": ""},
        }
        return Prepared(
            agent_id=self.agent.id,  # type: ignore[arg-type]
            agent_name=self.agent.name,
            draft=self.draft,
            category=self.category,
            amount=self.amount,
            currency=self.currency,
            risk=risk,
            key=key,
            fingerprint=request_fingerprint(self.draft),
            base_url=base_url,
            token_hash=token_hash,
        )


def check(rt: Runtime, *, agent: Agent, draft: DraftIn) -> Checked:
    """Validate against the config and the agent's registration."""
    category = rt.config.categories.get(draft.category)
    if category is None:
        raise Invalid(f"unknown category {draft.category!r}", field="category")
    if draft.category not in agent_categories(agent):
        raise Forbidden(
            f"agent {agent.name!r} may not submit to category {draft.category!r}", field="category"
        )
    amount: Decimal | None = None
    currency: str | None = None
    if draft.amount is not None:
        currency = draft.currency or category.currency
        if currency != category.currency:
            raise Invalid(f"category {category.name!r} works in {category.currency}", field="currency")
        try:
            amount = policy.parse_api_amount(draft.amount, currency_exponent(currency))
        except ValueError as exc:
            raise Invalid(str(exc), field="amount") from None
    elif draft.currency is not None:
        raise Invalid("currency given without an amount", field="currency")
    if draft.callback_url is not None:
        if not URL_CHARS.fullmatch(draft.callback_url):
            # The HTTP client would drop or percent-encode them: the URL called would not be this one.
            raise Invalid(
                "callback_url must be a plain URL: no spaces, control or non-ASCII characters"
                " (percent-encode them)",
                field="callback_url",
            )
        prefixes: list[str] = json.loads(agent.callback_prefixes)
        if not any(draft.callback_url.startswith(prefix) for prefix in prefixes):
            raise Invalid(
                "callback_url is not under a prefix registered for this agent", field="callback_url"
            )
        if _dot_segments(draft.callback_url):
            # The HTTP client resolves them ("/cb/../admin" is sent as "/admin"): out of the prefix.
            raise Invalid("callback_url must not contain '.' or '..' path segments", field="callback_url")
        # The host comes from the prefix; one registered before the SSRF checks may still be refused.
        try:
            netguard.check_url(draft.callback_url)
        except ValueError as exc:
            raise Invalid(f"callback_url refused: {exc}", field="callback_url") from None
    return Checked(agent=agent, draft=draft, category=category, amount=amount, currency=currency)


def prepare(rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str) -> Prepared:
    """Validate and run the risk rules here, in this process (the CLI and tests; the server
    sends the rules to its RuleWorkers)."""
    checked = check(rt, agent=agent, draft=draft)
    return checked.prepared(run_job(checked.rule_job()), key=key, base_url=base_url)


URL_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: what a URL may hold as is


def _dot_segments(url: str) -> bool:
    """Does the URL's path hold a '.' or '..' segment, plain or percent-encoded (%2e, %2F)? A URL
    that does not even parse counts as one: it is refused either way."""
    try:
        path = unquote(urlsplit(url).path).replace("\\", "/")
    except ValueError:
        return True
    return any(segment in (".", "..") for segment in path.split("/"))
