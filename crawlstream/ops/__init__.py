"""Operations tooling: offsets reset/show, topic checks, the lag exporter and the status view.

Everything here reads the pipeline from the outside (Kafka admin API, Postgres, Connect REST);
no module imports a stage package. Each CLI module holds a typer sub-app that crawlstream/cli.py
mounts.
"""
