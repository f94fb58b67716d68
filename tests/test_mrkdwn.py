from __future__ import annotations

from bot.mrkdwn import escape, escape_cut
from handlers.blocks import fit


def test_escape_makes_links_mentions_and_mass_pings_inert() -> None:
    assert escape("<!channel> <@U1> <https://x.example|y> & @here @Everyone") == (
        "&lt;!channel&gt; &lt;@U1&gt; &lt;https://x.example|y&gt; &amp; @\u200bhere @\u200bEveryone"
    )


def test_fit_keeps_the_mass_mention_guard_when_it_has_to_cut() -> None:
    text = "@channel <b> & " * 500
    cut = fit(text, 300)
    assert len(cut) <= 300 and "cut here" in cut
    kept = cut.split("\n… _cut here")[0]
    assert "@channel" not in kept and "@\u200bchannel" in kept and "<" not in kept
    assert not kept.endswith(("&", "&l", "&lt", "&a", "&am", "&amp"))  # no entity split at the cut
    assert fit("short <x>", 300) == "short &lt;x&gt;"


def test_escape_cut_cuts_before_escaping() -> None:
    assert escape_cut("<" * 10, 4) == "&lt;&lt;&lt;…"
    assert escape_cut("ok", 4) == "ok"
