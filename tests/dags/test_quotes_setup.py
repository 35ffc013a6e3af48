"""quotes_setup through dag.test(): creates topics and template, skips Kibana without a connection; twice is a no-op."""

from __future__ import annotations

import uuid

from quoteflow.kafka.admin import describe_topic_config
from tests.helpers.dags import load_dag, returns, task_states


def test_setup_twice_second_run_changes_nothing(kafka_admin, es_client) -> None:
    dag = load_dag("quotes_setup")
    topic = f"test.setup.{uuid.uuid4().hex[:8]}"
    conf = {"topic": topic, "dlq_topic": f"{topic}.dlq", "partitions": 2, "retention_hours": 5}
    try:
        first = dag.test(run_conf=conf)
        assert str(first.state) == "success", task_states(first)
        got = returns(first)
        assert got["kafka_topics"][0][topic]["created"] and got["kafka_topics"][0][f"{topic}.dlq"]["created"]
        assert got["es_template"][0] in ("created", "updated", "unchanged")
        assert got["kibana_objects"][0] == {"skipped": True, "changed": False}
        config = describe_topic_config(kafka_admin, topic)
        assert config["message.timestamp.type"] == "LogAppendTime" and config["retention.ms"] == str(5 * 3600 * 1000)
        assert len(kafka_admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 2

        second = dag.test(run_conf=conf)
        assert str(second.state) == "success", task_states(second)
        again = returns(second)
        assert not any(t["changed"] for t in again["kafka_topics"][0].values())
        assert again["es_template"][0] == "unchanged"
        template = es_client.indices.get_index_template(name="quotes")["index_templates"][0]["index_template"]
        assert template["template"]["mappings"]["dynamic"] == "strict"

        # A drifted topic is brought back in line, and the change is reported.
        third = dag.test(run_conf={**conf, "retention_hours": 6, "partitions": 3})
        changes = returns(third)["kafka_topics"][0][topic]["changes"]
        assert "partitions 2 -> 3" in changes and any(c.startswith("retention.ms") for c in changes)
    finally:
        kafka_admin.delete_topics([topic, f"{topic}.dlq"], operation_timeout=30)
