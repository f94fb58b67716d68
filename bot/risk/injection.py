"""Prompt injection: instructions aimed at an AI or the reviewer, in the draft or the customer's text."""

from __future__ import annotations

import re

from bot.risk.findings import Finding
from bot.risk.text import RiskText, quoted

_INJECTION_WORDS = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b(?: \w+){0,3}? (?:previous|prior|above|earlier|"
    r"preceding|all|any|your|the|system|these|those)(?: \w+){0,2}? (?:instructions?|rules?|prompts?|"
    r"directions?|guidelines?|policy|policies|context|constraints?)\b"
    r"|\bdisregard (?:the|everything|all) (?:above|before)\b"
    r"|\byou are now (?:in )?(?:developer|admin|administrator|god|debug|jailbreak|dan|unrestricted|"
    r"unfiltered|maintenance|test) mode\b"
    r"|\byou are now (?:a |an )?(?:new |different )?(?:ai|assistant|chatbot|language model|persona|"
    r"character|dan|unrestricted|unfiltered|jailbroken)\b"
    r"|\b(?:system|developer) (?:prompt|instructions?)\b"
    r"|\bmark (?:this|it|the draft|this draft|this reply|this message|the message) as (?:safe|approved|"
    r"low risk|verified|harmless|ok|okay|not risky|no risk|clean)\b"
    r"|\bapprove this\b(?! (?:return|refund|exchange|order|request|claim|purchase|cancellation|change)\b)"
    r"|\b(?:reviewer|moderator|approver|human)s? (?:please )?approve\b"
    r"|\bthis (?:draft|message|reply|response) (?:is|has been|was) (?:pre ?approved|verified|safe|"
    r"approved|already approved)\b"
    r"|\b(?:pre ?approved|already approved|auto ?approved) by (?:the )?(?:system|safety|admin|security|"
    r"compliance)\b"
    r"|\bdo not flag\b"
    r"|\bapprove (?:it |this )?without (?:reading|review\w*|changes|checking|looking)\b"
    r"|\b(?:already|been) (?:checked|verified|approved|reviewed|cleared) by (?:the )?(?:\w+ )?"
    r"(?:team|system)\b"
    r"|\bnew instructions? (?:for|to) (?:the )?(?:ai|assistant|bot|model|agent|you)\b"
    r"|\b(?:assistant|system|ai|bot|model) (?:note|instruction|override|command)s?\b"
    r"|\bnote (?:to|for) (?:the )?(?:reviewer|assistant|ai|model|bot|approver|moderator)\b"
    r"|\b(?:tell|inform|assure) the (?:reviewer|approver|moderator)\b"
    r"|\b(?:print|reveal|show|repeat|output|display) (?:me )?(?:your|the) (?:system )?"
    r"(?:prompt|instructions)\b"
    r"|\bignorier\w* (?:\w+ ){0,2}(?:vorherigen|bisherigen|obigen|alle|alten)(?: \w+)? anweisungen\b"
    r"|\bignore[rz]? (?:\w+ ){0,2}instructions (?:precedentes|ci dessus)\b"
    r"|\bignora\w* (?:\w+ ){0,2}instrucciones (?:anteriores|previas)\b"
)
_INJECTION_MARKUP = re.compile(
    r"\[/?inst\]|<\|im_(?:start|end)\|>|<\|?(?:system|assistant)\|?>|</?(?:system|instructions?)>"
    r"|^[ \t]*#{2,}[ \t]*(?:system|instructions?)\b|\bnew instructions?[ \t]*:"
    r"|(?:^|[\[(<{])[ \t]*(?:note (?:to|for) )?(?:the )?(?:reviewer|approver|moderator)s?[ \t]*:",
    re.MULTILINE,
)


def _injection(text: RiskText) -> str | None:
    m = _INJECTION_WORDS.search(text.words) or _INJECTION_MARKUP.search(text.folded)
    return m.group() if m else None


def check_injection(draft: RiskText, ctx: RiskText | None) -> list[Finding]:
    findings: list[Finding] = []
    hit = _injection(draft)
    if hit:
        findings.append(
            Finding(
                "prompt_injection",
                "high",
                f"The draft contains instructions aimed at an AI or the reviewer "
                f"(\u201c{quoted(hit)}\u201d).",
            )
        )
    hit = _injection(ctx) if ctx is not None else None
    if hit:
        findings.append(
            Finding(
                "prompt_injection",
                "high",
                f"The customer context tries to instruct the AI (\u201c{quoted(hit)}\u201d); "
                "check the draft did not follow it.",
            )
        )
    return findings
