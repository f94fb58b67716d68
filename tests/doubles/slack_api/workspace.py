"""The double's one workspace: its ids, tokens and scopes, and the user records it serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

JSON: TypeAlias = dict[str, Any]

TEAM_ID = "T0001"
TEAM_DOMAIN = "acme"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0001"
APP_ID = "A0001"
DEFAULT_BOT_TOKEN = "xoxb-test"
DEFAULT_APP_TOKEN = "xapp-test"
# The minimal bot scopes from the reference (§7) plus files:write for files_upload_v2.
DEFAULT_SCOPES = (
    "chat:write",
    "commands",
    "users:read",
    "usergroups:read",
    "im:write",
    "files:write",
    "channels:history",
    "groups:history",
)

_SCOPE_NEEDED = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "users.info": "users:read",
    "bots.info": "users:read",
    "usergroups.users.list": "usergroups:read",
    "conversations.open": "im:write",
    "conversations.history": "channels:history",
    "conversations.replies": "channels:history",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}
_USER_DEFAULTS: JSON = {
    "deleted": False,
    "is_admin": False,
    "is_owner": False,
    "is_primary_owner": False,
    "is_restricted": False,
    "is_ultra_restricted": False,
    "is_bot": False,
    "is_app_user": False,
    "tz": "UTC",
}


def _user_record(user_id: str, profile: Mapping[str, Any]) -> JSON:
    name = profile.get("name", user_id.lower())
    real_name = profile.get("real_name", name)
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "real_name": real_name,
        **_USER_DEFAULTS,
        **profile,
        "profile": {"real_name": real_name, "display_name": name, **profile.get("profile", {})},
    }


def _dm_id(user_id: str) -> str:
    return "D" + user_id[1:]
