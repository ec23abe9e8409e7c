"""Stage: the downstream consumer of page events (``crawlstream follow``) and its webhooks.

follow.py reads ``<event_message_prefix>.page`` (Debezium's outbox events), prints or forwards each
event; webhooks/ signs and delivers them. A stage like crawlers, streams and sinks: it imports only
the kernel (``crawlstream``); the CLI (control/cli.py) mounts its typer sub-app.
"""
