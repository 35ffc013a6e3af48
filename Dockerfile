# quoteflow's Airflow image: the official Airflow image plus requirements.txt, installed with the
# project's constraints.txt (Airflow's published constraints cannot be fetched from the project's
# machines, so constraints.txt is the project's own full pin set). docker-compose.yaml builds it.
#
# The Python variant matches the interpreter constraints.txt was frozen on (see its first line), and
# AIRFLOW_VERSION must equal the apache-airflow pin in requirements.txt (tests/unit/test_compose.py
# checks both).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
COPY requirements.txt constraints.txt /opt/quoteflow/
# Pinning apache-airflow on the same command line keeps pip from up- or downgrading Airflow itself
# (the recipe of Airflow's "extending the image" docs). Runs as the image's `airflow` user.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/quoteflow/requirements.txt -c /opt/quoteflow/constraints.txt
# The library itself, as the `quoteflow` package with its `quoteflow` command (dependencies are
# already pinned above). A code change needs `docker compose build`.
COPY pyproject.toml /opt/quoteflow/
COPY include/quoteflow /opt/quoteflow/include/quoteflow
RUN pip install --no-cache-dir --no-deps /opt/quoteflow
