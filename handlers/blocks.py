"""Pure Block Kit builders (slack_sdk.models): draft cards, manual-queue items, modals.

Agent-written text is escaped before it reaches mrkdwn, so it can never mention anyone,
ping @channel or hide a link behind other text, and it is cut to fit Slack's limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.mrkdwn import escape, escape_cut, slack_time
from bot.policy import EDITABLE_CHARS
from handlers import ids

SECTION_LIMIT = 3000
# Slack refuses a message whose blocks' text adds up to too much (`msg_blocks_too_long`); it
# documents no number and was seen refusing 11,341 characters: a card stays under this.
MESSAGE_TEXT_BUDGET = 10_000
QUOTE_STEPS = (2900, 2000, 1400, 1000, 700)  # each quoted text's budget, tried in turn
TEXT_BUDGET = 2800  # of a section's 3000, leaving room for the truncation note


def fit(text: str, budget: int = TEXT_BUDGET) -> str:
    """Escape and cut `text` so the result stays within `budget` characters, with a visible note."""
    escaped = escape(text)
    if len(escaped) <= budget:
        return escaped
    # The longest prefix whose escaped form fits: escaping a prefix as a whole (not character by
    # character) keeps the @channel guard, and never splits an entity.
    room, low, high = budget - 60, 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if len(escape(text[:middle])) <= room:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low]) + f"\n… _cut here: {len(text) - low:,} more characters not shown_"


def quote(text: str, budget: int = TEXT_BUDGET) -> str:
    """`fit`, then shown as a block quote; every line's '>' counts against the budget too."""
    room = budget
    while True:
        quoted = "\n".join(">" + line for line in fit(text, room).split("\n"))
        if len(quoted) <= budget:
            return quoted
        room -= len(quoted) - budget + 10


@dataclass(frozen=True)
class DecisionLine:
    action: str
    by: str
    at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class DraftCard:
    """Everything a draft message shows; assembled from the database by bot/cards.py."""

    id: str
    version: int
    category: str
    agent: str
    status: str
    reason: str | None
    summary: str
    body: str
    context: str | None
    amount: str | None  # "30.00 USD"
    approved_body: str | None
    edited: bool
    risk_level: str
    findings: list[dict[str, str]]
    ai_status: str
    ai_note: str
    usage: str | None
    approvals_needed: int
    first_approver: str | None
    decisions: list[DecisionLine] = field(default_factory=list)
    execution_status: str = "none"
    execution_attempts: int = 0
    execution_error: str | None = None
    agent_paused: bool = False
    category_manual: bool = False
    manual_by_config: bool = False  # the config file's `mode = "manual"`, which Slack cannot end
    expires_at: datetime | None = None
    agent_body: str | None = None  # the agent's own text, when a first approver's edit is now `body`
    ended_at: datetime | None = None  # when it expired or was withdrawn: no decision row says so
    has_executor: bool = True  # Retry sends the action to the category's executor again


STATUS_LINE = {
    "approved": ":white_check_mark: *Approved*",
    "rejected": ":x: *Rejected*",
    "expired": ":hourglass: *Expired* — nobody decided in time; nothing was done",
    "cancelled": ":leftwards_arrow_with_hook: *Withdrawn by the agent*",
    "executed": ":white_check_mark: *Approved and carried out*",
    "failed": ":warning: *Failed* — the action was not carried out",
    "needs_reconciliation": ":rotating_light: *Needs reconciliation* — nobody knows if the action happened;"
    " check the target system before retrying",
    "handled": ":ballot_box_with_check: *Handled by a human*",
}
MANUAL_REASON = {
    "agent_paused": "the agent is paused",
    "category_manual": "the category is in manual mode",
    "over_cap": "today's cap would be exceeded",
    "agent_offline": "the agent is offline (missed heartbeats)",
}
SEVERITY_ICON = {"high": ":red_circle:", "medium": ":large_orange_circle:", "low": ":white_circle:"}


def fallback_text(card: DraftCard) -> str:
    amount = f" {card.amount}" if card.amount else ""
    prefix = "Manual work" if card.status == "manual" else f"Draft {card.status}"
    return f"{prefix}: {card.category}{amount} from {card.agent} — {escape_cut(card.summary, 200)}"


def text_length(blocks: list[Block]) -> int:
    """The characters of text in `blocks`, as Slack adds them up against a message's total."""

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            return sum(len(v) if k == "text" and isinstance(v, str) else walk(v) for k, v in node.items())
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return 0

    return walk([block.to_dict() for block in blocks])


def draft_blocks(card: DraftCard) -> list[Block]:
    """The draft message (or manual-queue item) for any state of the draft, within the message's
    total: with the customer's words, the draft and its edit all long, each quote is cut shorter."""
    for quoted in QUOTE_STEPS:
        blocks = _draft_blocks(card, quoted)
        if text_length(blocks) <= MESSAGE_TEXT_BUDGET:
            break
    return blocks


def _draft_blocks(card: DraftCard, quoted: int) -> list[Block]:
    title = " · ".join(part for part in (card.category, card.amount, card.agent) if part)
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=title[:150], emoji=False)),
        SectionBlock(text=MarkdownTextObject(text=f"*{fit(card.summary, 500)}*")),
    ]
    if card.context:
        blocks.append(
            SectionBlock(text=MarkdownTextObject(text="*Customer said*\n" + quote(card.context, quoted)))
        )
    label = "*Agent's suggestion*" if card.status == "manual" else "*Draft*"
    own = card.body if card.agent_body is None else card.agent_body
    blocks.append(SectionBlock(text=MarkdownTextObject(text=label + "\n" + quote(own, quoted))))
    if card.status == "pending" and card.agent_body is not None:
        under_review = "*As edited by the first approver* (what the second approval approves)\n"
        blocks.append(SectionBlock(text=MarkdownTextObject(text=under_review + quote(card.body, quoted))))
    elif card.edited and card.approved_body is not None:
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(text="*Approved as edited*\n" + quote(card.approved_body, quoted))
            )
        )
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_risk_text(card))]))
    if card.usage:
        blocks.append(
            ContextBlock(elements=[MarkdownTextObject(text=f":bar_chart: Today's cap: {card.usage}")])
        )
    banner = _banner(card)
    if banner:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=banner)))
    blocks.append(DividerBlock())
    blocks.extend(_footer(card))
    return blocks


def _risk_text(card: DraftCard) -> str:
    if card.findings:
        lines = [
            f"{SEVERITY_ICON.get(f['severity'], '')} `{escape(f['code'])}` {escape_cut(f['message'], 300)}"
            for f in card.findings[:8]
        ]
        if len(card.findings) > 8:
            lines.append(f"… and {len(card.findings) - 8} more findings")
        head = f"*Risk: {card.risk_level}*"
    else:
        lines, head = [], "*Risk: none found by the rules*"
    ai = {
        "pending": "AI review pending…",
        "ok": "AI review done",
        "unavailable": f"AI review unavailable ({_note(card.ai_note)}): rules only",
        "manual": "not reviewed by AI (manual item)",
        "skipped": "AI review not done: the draft left review first",
        "off": "",
    }.get(card.ai_status, "")
    text = "\n".join([head + (f" · {ai}" if ai else ""), *lines])
    return text[:SECTION_LIMIT]


def _note(note: str) -> str:
    """The reviewer's note, without the "AI review unavailable:" its text may already start with."""
    return escape(note.removeprefix("AI review unavailable:").strip())[:120]


def _banner(card: DraftCard) -> str | None:
    if card.status == "manual":
        why = MANUAL_REASON.get(card.reason or "", card.reason or "")
        return f":raising_hand: *A human has to handle this* ({why}). The agent was told not to act."
    if card.status not in ("pending", "approved"):
        return None
    if card.agent_paused:
        return ":octagonal_sign: *Agent paused* — nothing of this agent is approved or executed until an admin resumes it."
    if card.category_manual and card.status == "approved":
        until = (
            "the config file returns the category to review"
            if card.manual_by_config
            else f"an admin runs `/agent review {card.category}`"
        )
        return (
            ":raising_hand: *Category in manual mode* — this approved action is held, not carried out,"
            f" until {until}."
        )
    if card.category_manual:
        return ":raising_hand: *Category in manual mode* — handle this by hand; approvals are refused."
    return None


def _footer(card: DraftCard) -> list[Block]:
    value = f"{card.id}:{card.version}"
    if card.status == "pending":
        note = []
        if card.approvals_needed == 2:
            if card.first_approver:
                note.append(
                    f":one: First approval by <@{card.first_approver}>; a second, different reviewer decides."
                )
            else:
                note.append(":two: Needs two different approvers.")
        if card.expires_at:
            note.append(f"Expires {slack_time(card.expires_at)}.")
        blocks: list[Block] = []
        if note:
            blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" ".join(note))]))
        blocks.append(
            ActionsBlock(
                block_id=f"draft:{card.id}",
                elements=[
                    ButtonElement(text="Approve", action_id=ids.APPROVE, value=value, style="primary"),
                    ButtonElement(text="Edit", action_id=ids.EDIT, value=value),
                    ButtonElement(text="Reject", action_id=ids.REJECT, value=value, style="danger"),
                ],
            )
        )
        return blocks
    if card.status == "manual":
        claimed = next((d for d in reversed(card.decisions) if d.action == "claim"), None)
        elements = [ButtonElement(text="Done", action_id=ids.DONE, value=value, style="primary")]
        if claimed is None:
            elements.insert(0, ButtonElement(text="Claim", action_id=ids.CLAIM, value=value))
        blocks = [ActionsBlock(block_id=f"manual:{card.id}", elements=elements)]
        if claimed:
            blocks.insert(
                0,
                ContextBlock(
                    elements=[MarkdownTextObject(text=f"Claimed by <@{claimed.by}> {slack_time(claimed.at)}")]
                ),
            )
        return blocks
    lines = [STATUS_LINE.get(card.status, f"*{card.status}*")]
    ended = _ended(card)
    if ended:
        lines.append(ended)
    for decision in card.decisions:
        verb = {
            "approve": "Approved",
            "edit": "Edited and approved",
            "reject": "Rejected",
            "claim": "Claimed",
            "handled": "Handled",
        }
        line = f"{verb.get(decision.action, decision.action)} by <@{decision.by}> {slack_time(decision.at)}"
        if decision.reason:
            line += f": {fit(decision.reason, 300)}"
        lines.append(line)
    if card.execution_status not in ("none",):
        line = f"Execution: {card.execution_status} after {card.execution_attempts} attempt(s)"
        if card.execution_error:
            line += f" — {escape(card.execution_error)[:300]}"
        lines.append(line)
    blocks = [SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:SECTION_LIMIT]))]
    if card.status in ("failed", "needs_reconciliation") and card.has_executor:
        blocks.append(
            ActionsBlock(
                block_id=f"retry:{card.id}",
                elements=[ButtonElement(text="Retry", action_id=ids.RETRY, value=value, style="danger")],
            )
        )
    return blocks


def _ended(card: DraftCard) -> str | None:
    """Who ended a draft that no human decided, and when: the agent withdrew it, or time ran out."""
    if card.ended_at is None:
        return None
    if card.status == "cancelled":
        return f"Withdrawn by *{escape(card.agent)}* {slack_time(card.ended_at)}"
    if card.status == "expired":
        return f"Expired {slack_time(card.ended_at)}"
    return None


def metadata(
    draft_id: str, version: int, channel: str | None, ts: str | None, category: str | None = None
) -> str:
    """A modal's private_metadata: which draft and version it decides, where to answer, and the
    draft's category (so the Edit modal's amount is checked before its ack without a database read)."""
    meta = {"draft_id": draft_id, "version": version, "channel": channel, "ts": ts}
    return json.dumps(meta | ({"category": category} if category else {}))


def edit_modal(*, draft_id: str, version: int, body: str, amount: str | None, meta: str) -> View:
    """Edit opens this; submitting it approves the edited text as the reviewer's approval."""
    blocks: list[Block] = [
        InputBlock(
            block_id=ids.EDIT_BODY_BLOCK,
            label="Reply to send",
            element=PlainTextInputElement(
                action_id=ids.EDIT_BODY_INPUT, multiline=True, initial_value=body, max_length=EDITABLE_CHARS
            ),
        )
    ]
    if amount is not None:
        blocks.append(
            InputBlock(
                block_id=ids.EDIT_AMOUNT_BLOCK,
                label="Amount",
                element=PlainTextInputElement(
                    action_id=ids.EDIT_AMOUNT_INPUT, initial_value=amount, max_length=20
                ),
            )
        )
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Submitting approves the edited version.")]))
    return View(
        type="modal",
        callback_id=ids.EDIT_MODAL,
        title="Edit and approve",
        submit="Approve edited",
        close="Cancel",
        private_metadata=meta,
        blocks=blocks,
    )


def reject_modal(*, meta: str) -> View:
    return View(
        type="modal",
        callback_id=ids.REJECT_MODAL,
        title="Reject draft",
        submit="Reject",
        close="Cancel",
        private_metadata=meta,
        blocks=[
            InputBlock(
                block_id=ids.REJECT_REASON_BLOCK,
                label="Why? The agent reads this.",
                element=PlainTextInputElement(
                    action_id=ids.REJECT_REASON_INPUT, multiline=True, min_length=1, max_length=2000
                ),
            )
        ],
    )


def _bar(fill: float | None) -> str:
    """A text bar for the most used of a category's caps (a fraction; None: no cap)."""
    if fill is None:
        return ""
    ratio = min(1.0, max(0.0, fill))
    filled = round(ratio * 10)
    return "`" + "█" * filled + "░" * (10 - filled) + f"` {ratio:.0%} "


HOME_ROWS = 30  # agents, and categories, listed on App Home (a Home tab holds 100 blocks)


def _more(count: int, what: str) -> list[Block]:
    """The line under a cut App Home list: how many are not shown, and where they are."""
    if count <= HOME_ROWS:
        return []
    text = f"… and {count - HOME_ROWS} more {what}: `/agent status` lists them all."
    return [ContextBlock(elements=[MarkdownTextObject(text=text)])]


def home_view(home: Any) -> View:
    """App Home: agents with Pause/Resume, categories and modes, today's caps, pending work."""
    out: list[Block] = [HeaderBlock(text=PlainTextObject(text="Countersign"))]
    if home.restricted:
        text = "Countersign shows its agents, caps and pending work to reviewers and admins only."
        return View(type="home", blocks=[*out, SectionBlock(text=MarkdownTextObject(text=text))])
    if home.all_paused:
        resume_all = None
        if home.can_resume:
            resume_all = ButtonElement(
                text="Resume all", action_id=ids.HOME_RESUME, value="all", style="primary"
            )
        out.append(
            SectionBlock(
                text=MarkdownTextObject(text=":octagonal_sign: *All agents are paused.*"),
                accessory=resume_all,
            )
        )
    out.append(SectionBlock(text=MarkdownTextObject(text="*Agents*")))
    for agent in home.agents[:HOME_ROWS]:
        state = agent.state_text() + (" · offline" if agent.offline else "")
        reason = f" — {escape_cut(agent.reason, 200)}" if agent.reason else ""
        accessory = None
        # While all agents are paused, pausing one more changes nothing now: the way out is
        # Resume all above. An agent's own pause keeps its Resume, which `resume all` leaves alone.
        if agent.state == "paused" and home.can_resume:
            accessory = ButtonElement(
                text="Resume", action_id=ids.HOME_RESUME, value=agent.name, style="primary"
            )
        elif agent.state != "paused" and not home.all_paused and home.can_pause:
            accessory = ButtonElement(
                text="Pause", action_id=ids.HOME_PAUSE, value=agent.name, style="danger"
            )
        out.append(
            SectionBlock(
                text=MarkdownTextObject(text=f"*{agent.name}*: {state}{reason}"), accessory=accessory
            )
        )
    out.extend(_more(len(home.agents), "agents"))
    out.append(DividerBlock())
    out.append(SectionBlock(text=MarkdownTextObject(text="*Categories and today's caps*")))
    for category in home.categories[:HOME_ROWS]:
        until = f" until {slack_time(datetime.fromisoformat(category.until))}" if category.until else ""
        text = f"*{category.name}* — {category.mode}{until}\n{_bar(category.fill)}{category.usage}"
        out.append(SectionBlock(text=MarkdownTextObject(text=text)))
    out.extend(_more(len(home.categories), "categories"))
    out.append(DividerBlock())
    oldest = ""
    if home.oldest_pending is not None:
        minutes = int((home.now - home.oldest_pending).total_seconds() // 60)
        oldest = f" · oldest waiting {minutes} min"
    unfinished = home.unfinished_text()
    also = f"\n*Also open*: {unfinished}" if unfinished else ""
    out.append(SectionBlock(text=MarkdownTextObject(text=f"*Pending drafts*: {home.pending}{oldest}{also}")))
    return View(type="home", blocks=out[:100])
