"""crawlstream: a stream-processing web crawler platform.

Scrapy crawlers produce page records to Kafka, faust agents deduplicate them, sink workers
write them to PostgreSQL and Debezium republishes the changes. This package is the kernel every
stage imports: settings, records, topics, errors, URLs, logs, metrics, offsets, dead letters,
addresses, retrying and scope. It imports no stage and nothing of the control plane above them
(``control``: the CLI, the stack, ops, runs); tests/unit/test_layout.py pins that.
"""

__version__ = "0.1.0"
