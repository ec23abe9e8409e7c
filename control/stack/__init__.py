"""The embedded stack for local runs and tests: Kafka (KRaft), PostgreSQL, Kafka Connect + Debezium.

Entry points: control.stack.supervisor (``up``/``down``/``status``), control.stack.cli
(the ``stack`` typer sub-app) and control.stack.processes (managed worker processes).
Nothing is imported here, so production code that never starts a stack pays nothing for it.
"""
