"""The least-privilege plan (crawlstream/acls.py): each stage only its own topics and groups.

Which stages use a topic comes from the catalog (TopicSpec.writers/readers); which groups a stage
uses, from the functions its code names its groups with: a topic or group added without a grant,
or granted to a stage that does not use it, fails here."""

from __future__ import annotations

from crawlers import frontierrun, hoststate
from crawlstream.acls import CLUSTER, Grant, acl_plan, allowed, consumer_groups, principal
from crawlstream.settings import STAGES, Settings, Stage
from crawlstream.topics import catalog
from sinks.families import FAMILIES


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


# Every stage but the admin, a super user with no grant of its own.
USERS: tuple[Stage, ...] = tuple(s for s in STAGES if s != "admin")


def _settings() -> Settings:
    # Non-default names, so a grant built from a default rather than the settings shows.
    return Settings(
        kafka={"topic_prefix": "acme", "credentials": {"crawler": {"username": "c1", "password": "p"}}},
        streams={"app_id": "acme-flow"},
        sink={"group_id": "acme-sinks"},
        follow={"group_id": "acme-follow"},
    )


def test_every_catalog_topic_is_granted_to_exactly_the_stages_that_use_it() -> None:
    settings = _settings()
    plan = acl_plan(settings)
    for spec in catalog(settings).all():
        assert spec.writers, f"{spec.name}: no stage writes it"
        for stage in USERS:
            who = principal(settings, stage)
            assert allowed(plan, who, "topic", spec.name, "read") == (stage in spec.readers), (
                spec.name,
                stage,
            )
            assert allowed(plan, who, "topic", spec.name, "write") == (stage in spec.writers), (
                spec.name,
                stage,
            )
            uses = stage in spec.readers or stage in spec.writers
            assert allowed(plan, who, "topic", spec.name, "describe_configs") == uses, (spec.name, stage)


def _groups_in_use(settings: Settings) -> dict[str, Stage]:
    """The consumer groups the stages' own code builds, each with the stage whose clients join it."""
    crawl_group = "acme-crawlers"  # a distributed crawl's --group-id
    job_group = frontierrun.group_of(settings, "nightly")
    return {
        settings.streams.app_id: "streams",
        **{family.group(settings): "sinks" for family in FAMILIES.values()},
        settings.follow.group_id: "follow",
        crawl_group: "crawler",
        hoststate.hosts_group(crawl_group): "crawler",
        job_group: "crawler",
        hoststate.hosts_group(job_group): "crawler",
        frontierrun.progress_group(settings, "0123abcd"): "crawler",
    }


def test_every_consumer_group_a_stage_uses_is_granted_to_that_stage_only() -> None:
    settings = _settings()
    plan = acl_plan(settings)
    groups = _groups_in_use(settings)
    assert len(groups) == 7 + len(FAMILIES)  # no two uses share a name
    for group, user in groups.items():
        for stage in USERS:
            who = principal(settings, stage)
            assert allowed(plan, who, "group", group, "read") == (stage == user), (group, stage)
    # A frontier run checks that a stream worker is up and reads the stream group's offsets:
    # the crawler may describe that group, not join it.
    crawler = principal(settings, "crawler")
    assert allowed(plan, crawler, "group", settings.streams.app_id, "describe")
    assert not allowed(plan, principal(settings, "sinks"), "group", settings.streams.app_id, "describe")


def test_no_grant_outside_the_catalog_the_groups_and_the_streams_own_topics() -> None:
    settings = _settings()
    topics = {spec.name for spec in catalog(settings).all()}
    groups = {use.name for use in consumer_groups(settings)}
    for grant in acl_plan(settings):
        if grant.resource == "topic" and grant.pattern == "literal":
            assert grant.name in topics, grant
        elif grant.resource == "topic":
            assert grant.name == f"{settings.streams.app_id}-", grant
            assert grant.principal == principal(settings, "streams"), grant
        elif grant.resource == "group":
            assert grant.name in groups, grant
        else:
            assert grant == Grant(principal(settings, "connect"), "cluster", CLUSTER, "literal", "describe")
