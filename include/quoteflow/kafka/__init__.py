"""Kafka side of quoteflow: topic admin, producer, offset ranges for windows, dead letters."""
