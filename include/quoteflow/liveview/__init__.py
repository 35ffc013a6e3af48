"""The live quotes view: Elasticsearch aggregations, a Kafka tail and pipeline health, served as JSON + a page.

Plain library code (no Airflow imports); the Airflow plugin in ``plugins/quotes_view_plugin.py`` only adds
authentication, connection lookup and the indexer's run state from Airflow's database.
"""
