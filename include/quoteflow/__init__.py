"""quoteflow: TradingView quotes → Kafka → Elasticsearch, as a plain library.

Nothing in this package imports Airflow; the DAGs in ``dags/`` are thin wiring over it.
"""

__version__ = "0.1.0"
