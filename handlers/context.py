"""How listeners reach the use-cases: a middleware puts the Services into Bolt's context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncBoltContext

from bot.control import Control
from bot.review import Reviewing
from bot.runtime import Runtime

KEY = "countersign"


@dataclass(frozen=True)
class Services:
    rt: Runtime
    reviewing: Reviewing
    control: Control


def services(context: AsyncBoltContext) -> Services:
    value: Any = context[KEY]
    return value  # type: ignore[no-any-return]
