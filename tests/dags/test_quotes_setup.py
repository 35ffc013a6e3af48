"""quotes_setup through dag.test(): creates topics and templates, skips Kibana without a connection; twice: no-op."""

from __future__ import annotations

import uuid

from quoteflow.kafka.admin import describe_topic_config
from tests.helpers.dags import load_dag, returns, task_states


def test_setup_twice_second_run_changes_nothing(kafka_admin, es_client) -> None:
    dag = load_dag("quotes_setup")
    topic = f"test.setup.{uuid.uuid4().hex[:8]}"
    bars, gaps = f"{topic}.bars", f"{topic}.gaps"
    conf = {
        "topic": topic,
        "dlq_topic": f"{topic}.dlq",
        "bars_topic": bars,
        "gaps_topic": gaps,
        "partitions": 2,
        "retention_hours": 5,
    }
    try:
        first = dag.test(run_conf=conf)
        assert str(first.state) == "success", task_states(first)
        got = returns(first)
        assert {name: r["created"] for name, r in got["kafka_topics"][0].items()} == {
            topic: True,
            f"{topic}.dlq": True,
            bars: True,
            gaps: True,
        }
        for name, partitions in ((bars, 2), (gaps, 1)):
            assert describe_topic_config(kafka_admin, name)["message.timestamp.type"] == "LogAppendTime"
            assert len(kafka_admin.list_topics(topic=name, timeout=10).topics[name].partitions) == partitions
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
        for name in ("quotes", "bars", "gaps"):
            template = es_client.indices.get_index_template(name=name)["index_templates"][0]["index_template"]
            assert template["template"]["mappings"]["dynamic"] == "strict"

        # A drifted topic is brought back in line, and the change is reported.
        third = dag.test(run_conf={**conf, "retention_hours": 6, "partitions": 3})
        changes = returns(third)["kafka_topics"][0][topic]["changes"]
        assert "partitions 2 -> 3" in changes and any(c.startswith("retention.ms") for c in changes)
    finally:
        kafka_admin.delete_topics([topic, f"{topic}.dlq", bars, gaps], operation_timeout=30)
