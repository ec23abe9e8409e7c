"""Spiders of the crawl stage: one spider per module, class ``<Source>Spider``."""
