"""crawlstream: a stream-processing web crawler platform.

Scrapy crawlers produce page records to Kafka, faust agents deduplicate them, sink workers
write them to PostgreSQL and Debezium republishes the changes. This package is the shared
core the stages import: settings, records, topics, URLs, metrics, the CLI and the stack.
"""

__version__ = "0.1.0"
