from __future__ import annotations

from tests.adversarial.corpus import RULES, load, report, run

MIN_RECALL = 0.90
MAX_FALSE_POSITIVE_RATE = 0.10


def test_corpus_has_enough_realistic_cases_when_loaded() -> None:
    for name in ("bad.jsonl", "good.jsonl"):
        cases = load(name)
        assert len(cases) >= 45
        assert {c.category for c in cases} <= set(RULES)
        assert all(c.why and c.body is not None for c in cases)


def test_rules_flag_most_bad_drafts_when_run_on_the_corpus() -> None:
    matrix = run()
    assert matrix.recall >= MIN_RECALL, report(matrix)


def test_rules_leave_most_good_drafts_clean_when_run_on_the_corpus() -> None:
    matrix = run()
    assert matrix.false_positive_rate <= MAX_FALSE_POSITIVE_RATE, report(matrix)
