"""elasticsearch_default → client arguments: what is accepted, and what is refused before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from quoteflow.elastic.connect import CheckedNode
from quoteflow.settings import ConfigError, ConnectionInfo, elasticsearch_client_args


def conn(**fields) -> ConnectionInfo:
    extra = fields.pop("extra", {})
    return ConnectionInfo("elasticsearch_default", host="es.example", port=9243, extra=extra, **fields)


def test_https_with_a_ca_file_and_basic_auth(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = elasticsearch_client_args(
        conn(schema="https", login="quoteflow", password="pw", extra={"ca_certs": str(ca), "verify_certs": "true"})
    )
    assert args["hosts"] == ["https://es.example:9243"]
    assert args["basic_auth"] == ("quoteflow", "pw")
    assert (args["ca_certs"], args["verify_certs"]) == (str(ca), True)
    node = args["node_class"]
    assert issubclass(node, CheckedNode)
    assert (node.conn_id, node.url, node.credentials) == (
        "elasticsearch_default",
        "https://es.example:9243",
        "basic auth as user 'quoteflow'",
    )
    assert str(ca) in node.ca_source


def test_api_key_as_a_string_or_an_id_and_key_pair() -> None:
    assert elasticsearch_client_args(conn(extra={"api_key": "ZW5jb2RlZA=="}))["api_key"] == "ZW5jb2RlZA=="
    args = elasticsearch_client_args(conn(extra={"api_key": ["id", "key"]}))
    assert args["api_key"] == ("id", "key") and "basic_auth" not in args
    assert args["node_class"].credentials == "extra.api_key"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"login": "u", "password": "p", "extra": {"api_key": "k"}}, "both login/password and extra.api_key"),
        ({"extra": {"api_key": 12}}, "extra.api_key must be"),
        ({"schema": "http", "extra": {"ca_certs": "/etc/hostname"}}, "extra.ca_certs but its URL http://"),
        ({"schema": "https", "extra": {"verify_certs": "maybe"}}, "extra.verify_certs must be true or false"),
        ({"schema": "https", "extra": {"ca_certs": "/nonexistent/ca.crt"}}, "'/nonexistent/ca.crt' is not a readable"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_connection(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="elasticsearch_default") as caught:
        elasticsearch_client_args(conn(**fields))
    assert message in str(caught.value)
