"""Making text inert in Slack mrkdwn: what an agent wrote, or a person typed, never mentions anyone,
pings a channel or hides a link behind other text once it is part of a message Countersign posts."""

from __future__ import annotations

import re
from datetime import datetime

MASS_MENTION = re.compile(r"@(?=(channel|here|everyone)\b)", re.IGNORECASE)


def escape(text: str) -> str:
    """Slack's three control characters as entities (no <…> links or mentions), no @channel pings."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # A zero-width space after '@' keeps '@here' readable but stops it from ever pinging.
    return MASS_MENTION.sub("@\u200b", text)


def escape_cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (an ellipsis marks a cut), then escaped: cutting first
    never splits an entity such as `&lt;`."""
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def slack_time(at: datetime) -> str:
    """A time Slack shows in each reader's own time zone, with a UTC fallback text."""
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{at:%Y-%m-%d %H:%M} UTC>"
