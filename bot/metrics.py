"""Prometheus metrics: state read from the database at scrape time, events counted in-process.

State gauges (drafts by status, pending, outbox depth and lag, cap usage, paused agents) come
from the database, so every replica reports the same truth; counters and the time-to-decision
histogram count what this process did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlmodel import col

from bot import caps
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft, OutboxJob


class StateCollector(Collector):
    """Reads the gauges from the database on each scrape."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        now = self.rt.clock()
        drafts = GaugeMetricFamily(
            "countersign_drafts", "Drafts by status and category", labels=["status", "category"]
        )
        pending = GaugeMetricFamily("countersign_pending_drafts", "Drafts waiting for a decision")
        oldest = GaugeMetricFamily("countersign_oldest_pending_seconds", "Age of the oldest pending draft")
        depth = GaugeMetricFamily(
            "countersign_outbox_depth", "Outbox jobs not yet delivered", labels=["kind"]
        )
        lag = GaugeMetricFamily("countersign_outbox_lag_seconds", "How late the most overdue queued job is")
        dead = GaugeMetricFamily(
            "countersign_outbox_dead_jobs",
            "Jobs that gave up in the last 30 days (older ones are pruned), by target",
            labels=["kind"],
        )
        usage = GaugeMetricFamily(
            "countersign_cap_usage_ratio", "Today's usage over the cap", labels=["category", "cap"]
        )
        paused = GaugeMetricFamily("countersign_paused_agents", "Agents paused (by a human or the breaker)")
        with transaction(self.rt.engine, write=False) as session:
            for status, category, count in session.execute(
                sa.select(col(Draft.status), col(Draft.category), sa.func.count()).group_by(
                    col(Draft.status), col(Draft.category)
                )
            ):
                drafts.add_metric([status, category], count)
            count, first = session.execute(
                sa.select(sa.func.count(), sa.func.min(col(Draft.created_at))).where(
                    col(Draft.status) == "pending"
                )
            ).one()
            pending.add_metric([], count)
            oldest.add_metric([], _age(now, first))
            queued = sa.select(col(OutboxJob.kind), sa.func.count()).where(
                col(OutboxJob.status).in_(["queued", "running"])
            )
            for kind, count in session.execute(queued.group_by(col(OutboxJob.kind))):
                depth.add_metric([kind], count)
            overdue = session.execute(
                sa.select(sa.func.min(col(OutboxJob.run_after))).where(col(OutboxJob.status) == "queued")
            ).scalar()
            lag.add_metric([], _age(now, overdue))
            for kind, count in session.execute(
                sa.select(col(OutboxJob.kind), sa.func.count())
                .where(col(OutboxJob.status) == "dead")
                .group_by(col(OutboxJob.kind))
            ):
                dead.add_metric([kind], count)
            for name, category in self.rt.config.categories.items():
                today = caps.usage(session, self.rt.config, category, now)
                if today.count_cap:
                    usage.add_metric([name, "count"], today.count_used / today.count_cap)
                if today.amount_cap_minor:
                    usage.add_metric([name, "amount"], today.amount_used_minor / today.amount_cap_minor)
            paused_count = session.execute(
                sa.select(sa.func.count()).select_from(Agent).where(col(Agent.state) == "paused")
            ).scalar_one()
            all_paused = queries.get_control(session, "pause:all") is not None
        paused.add_metric([], paused_count)
        yield from (drafts, pending, oldest, depth, lag, dead, usage, paused)
        yield GaugeMetricFamily(
            "countersign_all_agents_paused", "1 while `/agent pause all` holds", value=all_paused
        )


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


@dataclass
class Metrics:
    """One registry per app, so tests and replicas never share global state."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.decisions = Counter(
            "countersign_decisions", "Reviewer decisions", ["action", "category"], registry=self.registry
        )
        self.time_to_decision = Histogram(
            "countersign_time_to_decision_seconds",
            "From submission to the deciding click",
            ["category"],
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=self.registry,
        )
        self.deliveries = Counter(
            "countersign_delivery_attempts",
            "Outbox delivery attempts",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.reviewer = Counter(
            "countersign_ai_reviews", "Claude reviewer calls by outcome", ["outcome"], registry=self.registry
        )
        self.reviewer_available = Gauge(
            "countersign_ai_reviewer_available",
            "1 when the Claude reviewer has a key and its last call answered; 0 otherwise (rules only)",
            registry=self.registry,
        )

    def watch(self, rt: Runtime) -> None:
        self.registry.register(StateCollector(rt))

    def render(self) -> bytes:
        return generate_latest(self.registry)
