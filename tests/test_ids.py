"""Draft ids: `d_` and 26 base32 characters: the creation millisecond, then 80 random bits."""

from __future__ import annotations

import base64
import re
import secrets
import time

from bot.runtime import _base32, new_draft_id


def test_base32_matches_the_standard_encoder() -> None:
    for raw in [bytes(16), b"\xff" * 16, *(secrets.token_bytes(16) for _ in range(2000))]:
        expected = base64.b32encode(raw).decode().lower().rstrip("=")
        assert _base32(int.from_bytes(raw, "big") << 2, 26) == expected


def test_ids_are_well_formed_unique_and_carry_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_draft_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"d_[a-z2-7]{26}", draft_id) for draft_id in ids)
    assert len(set(ids)) == 1000
    for draft_id in ids:
        raw = base64.b32decode(draft_id[2:].upper() + "======")
        assert before <= int.from_bytes(raw[:6], "big") <= after
