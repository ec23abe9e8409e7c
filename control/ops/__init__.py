"""Operations tooling: offsets reset/show, topic checks, the lag exporter and the status view.

Everything here reads the pipeline from the outside (Kafka admin API, Postgres, Connect REST);
a stage is reached only through the probe it exposes (the sink's stored offsets: sinks.probe).
Each CLI module holds a typer sub-app that control/cli.py mounts; cdc.py is ``crawlstream cdc``.
"""
