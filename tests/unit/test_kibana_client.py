"""The Kibana client against request/response pairs written from Kibana's API documentation.

Kibana cannot run on this machine, so a tiny HTTP server on 127.0.0.1 replays what the docs say
Kibana answers (``/api/status``, ``/api/data_views/data_view``, ``/api/saved_objects/_export`` and
``_import``) and records what the client sent, which the tests then check.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from quoteflow.kibana import KibanaClient, KibanaError, KibanaUnavailable, read_saved_objects, setup_kibana
from quoteflow.settings import ConnectionInfo

STATUS_AVAILABLE = {
    "name": "kibana",
    "version": {"number": "9.2.0", "build_flavor": "default"},
    "status": {
        "overall": {"level": "available", "summary": "All services and plugins are available"},
        "core": {"elasticsearch": {"level": "available"}, "savedObjects": {"level": "available"}},
    },
}
STATUS_STARTING = {"status": {"overall": {"level": "unavailable", "summary": "Kibana is starting"}}}
DATA_VIEW_NOT_FOUND = {
    "statusCode": 404,
    "error": "Not Found",
    "message": "Saved object [index-pattern/quotes] not found",
}
DATA_VIEW = {
    "data_view": {
        "id": "quotes",
        "version": "WzEsMV0=",
        "title": "quotes-*",
        "timeFieldName": "@timestamp",
        "name": "quotes-*",
        "sourceFilters": [],
        "fields": {},
        "runtimeFieldMap": {},
        "fieldAttrs": {},
        "allowNoIndex": False,
        "namespaces": ["default"],
    }
}
EXPORT_MISSING = {
    "statusCode": 400,
    "error": "Bad Request",
    "message": "Error fetching objects to export",
    "attributes": {
        "objects": [
            {
                "id": "quotes-dashboard",
                "type": "dashboard",
                "error": {"statusCode": 404, "error": "Not Found", "message": "Not found"},
            }
        ]
    },
}


def _import_ok(n: int) -> dict[str, Any]:
    return {"successCount": n, "success": True, "warnings": [], "successResults": []}


IMPORT_MISSING_REFERENCE = {
    "successCount": 3,
    "success": False,
    "warnings": [],
    "errors": [
        {
            "id": "quotes-dashboard",
            "type": "dashboard",
            "title": "Quotes (live)",
            "meta": {"title": "Quotes (live)", "icon": "dashboardApp"},
            "error": {"type": "missing_references", "references": [{"type": "visualization", "id": "gone"}]},
        }
    ],
}


class Replay:
    """Answers each (method, path) with the next scripted response; records every request."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.requests: list[dict[str, Any]] = []

    def on(self, method: str, path: str, *responses: tuple[int, Any]) -> None:
        self.script.setdefault((method, path), []).extend(responses)

    def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        queue = self.script.get((method, path.split("?")[0]))
        if not queue:
            return 599, b'{"error":"unscripted request"}', "application/json"
        status, body = queue[0] if len(queue) == 1 else queue.pop(0)  # the last answer repeats
        if isinstance(body, bytes):
            return status, body, "application/ndjson"
        return status, json.dumps(body).encode(), "application/json"

    def paths(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]


@pytest.fixture
def kibana() -> Iterator[tuple[str, Replay]]:
    replay = Replay()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            replay.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            status, payload, ctype = replay.answer(self.command, self.path)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", replay
    server.shutdown()
    server.server_close()


def _conn(url: str, **extra: Any) -> ConnectionInfo:
    host, port = url.rsplit(":", 1)
    return ConnectionInfo("kibana_default", "http", host=host, port=int(port), extra=extra)


def _export_of(objects: list[dict[str, Any]]) -> bytes:
    lines = [{**o, "managed": False, "updated_at": "2026-11-28T03:00:00.000Z", "version": "WzUsMV0="} for o in objects]
    lines.append({"excludedObjects": [], "excludedObjectsCount": 0, "exportedCount": len(objects)})
    return b"\n".join(json.dumps(line).encode() for line in lines)


def test_first_setup_waits_creates_data_view_and_imports_with_overwrite(kibana) -> None:
    url, replay = kibana
    objects = read_saved_objects()
    replay.on("GET", "/api/status", (503, STATUS_STARTING), (200, STATUS_AVAILABLE))
    replay.on("GET", "/api/data_views/data_view/quotes", (404, DATA_VIEW_NOT_FOUND))
    replay.on("POST", "/api/data_views/data_view", (200, DATA_VIEW))
    replay.on("POST", "/api/saved_objects/_export", (400, EXPORT_MISSING))
    replay.on("POST", "/api/saved_objects/_import", (200, _import_ok(len(objects))))

    result = setup_kibana(_conn(url, api_key="c2VjcmV0"), timeout_s=20)

    assert result == {
        "skipped": False,
        "data_view": "created",
        "saved_objects": "imported",
        "objects": len(objects),
        "changed": True,
    }
    assert replay.paths() == [
        "GET /api/status",
        "GET /api/status",
        "GET /api/data_views/data_view/quotes",
        "POST /api/data_views/data_view",
        "POST /api/saved_objects/_export",
        "POST /api/saved_objects/_import?overwrite=true",
    ]
    for request in replay.requests:
        assert request["headers"]["Authorization"] == "ApiKey c2VjcmV0"
        if request["method"] == "POST":
            assert request["headers"]["kbn-xsrf"] == "true"
    create = json.loads(replay.requests[3]["body"])
    assert create["data_view"] == {
        "id": "quotes",
        "title": "quotes-*",
        "timeFieldName": "@timestamp",
        "name": "quotes-*",
    }
    upload = replay.requests[5]
    assert upload["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="quoteflow.ndjson"' in upload["body"]
    sent = [json.loads(line) for line in upload["body"].split(b"\r\n\r\n", 1)[1].split(b"\r\n--")[0].splitlines()]
    assert sent == objects


def test_second_setup_changes_nothing_and_says_so(kibana) -> None:
    url, replay = kibana
    objects = read_saved_objects()
    replay.on("GET", "/api/status", (200, STATUS_AVAILABLE))
    replay.on("GET", "/api/data_views/data_view/quotes", (200, DATA_VIEW))
    replay.on("POST", "/api/saved_objects/_export", (200, _export_of(objects)))

    result = setup_kibana(_conn(url), timeout_s=5)

    assert result["changed"] is False
    assert (result["data_view"], result["saved_objects"]) == ("unchanged", "unchanged")
    assert "POST /api/saved_objects/_import?overwrite=true" not in replay.paths()
    exported = json.loads(replay.requests[-1]["body"])
    assert {(o["type"], o["id"]) for o in exported["objects"]} == {(o["type"], o["id"]) for o in objects}


def test_changed_object_or_time_field_is_updated(kibana) -> None:
    url, replay = kibana
    objects = read_saved_objects()
    stale = [dict(o) for o in objects]
    stale[-1] = {**stale[-1], "attributes": {**stale[-1]["attributes"], "timeFrom": "now-1h"}}
    other_time_field = {"data_view": {**DATA_VIEW["data_view"], "timeFieldName": "received_at"}}
    replay.on("GET", "/api/status", (200, STATUS_AVAILABLE))
    replay.on("GET", "/api/data_views/data_view/quotes", (200, other_time_field))
    replay.on("POST", "/api/data_views/data_view/quotes", (200, DATA_VIEW))
    replay.on("POST", "/api/saved_objects/_export", (200, _export_of(stale)))
    replay.on("POST", "/api/saved_objects/_import", (200, _import_ok(len(objects))))

    result = setup_kibana(_conn(url), timeout_s=5)

    assert (result["data_view"], result["saved_objects"], result["changed"]) == ("updated", "imported", True)
    update = json.loads(replay.requests[2]["body"])
    assert update == {"data_view": {"title": "quotes-*", "timeFieldName": "@timestamp", "name": "quotes-*"}}


def test_import_errors_are_raised_with_their_reason(kibana) -> None:
    url, replay = kibana
    replay.on("POST", "/api/saved_objects/_import", (200, IMPORT_MISSING_REFERENCE))
    with pytest.raises(KibanaError, match="dashboard/quotes-dashboard: missing_references"):
        KibanaClient(url).import_objects(read_saved_objects())


def test_wait_gives_up_after_its_timeout(kibana) -> None:
    url, replay = kibana
    replay.on("GET", "/api/status", (503, STATUS_STARTING))
    started = time.monotonic()
    with pytest.raises(KibanaUnavailable, match="overall level|HTTP 503"):
        KibanaClient(url).wait_until_available(timeout_s=1.5, interval_s=0.3)
    assert time.monotonic() - started < 5


def test_bad_credentials_fail_fast_and_basic_auth_is_sent(kibana) -> None:
    url, replay = kibana
    replay.on("GET", "/api/status", (401, {"statusCode": 401, "error": "Unauthorized"}))
    host, port = url.rsplit(":", 1)
    info = ConnectionInfo("kibana_default", host=host, port=int(port), login="elastic", password="pw")
    with pytest.raises(KibanaError, match="credentials"):
        KibanaClient.from_connection(info).wait_until_available(timeout_s=30)
    assert replay.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert len(replay.requests) == 1


def test_unreachable_kibana_times_out() -> None:
    with pytest.raises(KibanaUnavailable, match="ConnectionError"):
        KibanaClient("http://127.0.0.1:9").wait_until_available(timeout_s=0.5, interval_s=0.2)


def test_no_connection_skips_kibana_and_says_so(caplog) -> None:
    with caplog.at_level("WARNING"):
        assert setup_kibana(None) == {"skipped": True, "changed": False}
    assert "Kibana data view and dashboard skipped" in caplog.text


def test_space_and_scheme_come_from_the_connection() -> None:
    info = ConnectionInfo("k", host="kibana.local", schema="https", extra={"space_id": "ops"})
    assert KibanaClient.from_connection(info).base_url == "https://kibana.local:5601/s/ops"
