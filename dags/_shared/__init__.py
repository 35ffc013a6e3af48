"""Airflow-side glue shared by the DAG files (connections → library settings); no DAGs here."""
