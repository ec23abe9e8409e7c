"""The least-privilege plan (crawlstream/acls.py): each stage only its own topics and groups."""

from __future__ import annotations

from crawlstream.acls import acl_plan, allowed, principal
from crawlstream.settings import Settings
from crawlstream.topics import catalog


def test_each_stage_reads_its_inputs_and_nothing_downstream() -> None:
    settings = Settings()
    plan = acl_plan(settings)
    t = catalog(settings)
    crawler, sinks, streams = (principal(settings, s) for s in ("crawler", "sinks", "streams"))
    assert allowed(plan, crawler, "topic", t.raw_pages.name, "write")
    assert not allowed(plan, crawler, "topic", t.unique_pages.name, "read")
    assert not allowed(plan, crawler, "topic", t.raw_pages.name, "read")
    assert allowed(plan, sinks, "topic", t.unique_pages.name, "read")
    assert not allowed(plan, sinks, "topic", t.unique_pages.name, "write")
    assert allowed(plan, streams, "group", settings.streams.app_id, "read")
    assert not allowed(plan, sinks, "group", settings.streams.app_id, "read")
    # Write implies describe, as in Kafka; the admin is a super user and has no grants.
    assert allowed(plan, crawler, "topic", t.raw_pages.name, "describe")
    assert not [g for g in plan if g.principal == principal(settings, "admin")]


def test_the_streams_stage_may_create_only_its_own_internal_topics() -> None:
    settings = Settings()
    plan = acl_plan(settings)
    streams = principal(settings, "streams")
    app_id = settings.streams.app_id
    assert allowed(plan, streams, "topic", f"{app_id}-dedup-changelog", "create")
    assert not allowed(plan, streams, "topic", catalog(settings).raw_pages.name, "create")
    assert not allowed(plan, principal(settings, "crawler"), "topic", f"{app_id}-x", "create")


def test_a_configured_username_is_the_principal() -> None:
    settings = Settings(kafka={"credentials": {"sinks": {"username": "pg-writer", "password": "p"}}})
    assert principal(settings, "sinks") == "User:pg-writer"
    assert any(g.principal == "User:pg-writer" for g in acl_plan(settings))
