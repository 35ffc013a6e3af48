"""Elasticsearch side of quoteflow: the index template, documents and ids, bulk writes with retries."""
