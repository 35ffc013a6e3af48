"""Project code importable from the repository root (``include.quoteflow``); no Airflow imports here."""
