"""Kibana over its HTTP API: wait until available, create or update the data view, import saved objects.

Endpoints used (Kibana 8.x/9.x): ``GET /api/status``, ``GET/POST /api/data_views/data_view[/{id}]``,
``POST /api/saved_objects/_export`` (to tell whether anything differs) and
``POST /api/saved_objects/_import?overwrite=true`` (multipart ``file``). Writes carry ``kbn-xsrf``.
Kibana cannot run on the project's machines, so the client is tested against request/response
pairs written from Kibana's API documentation (``tests/unit/test_kibana_client.py``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from quoteflow.settings import DATA_VIEW_ID, INDEX_PATTERN, ConfigError, ConnectionInfo

logger = logging.getLogger(__name__)

# The repository's kibana/ folder; an installed package (the Docker image) is told where it is mounted.
SAVED_OBJECTS_DIR = Path(os.environ.get("QUOTEFLOW_KIBANA_DIR") or Path(__file__).resolve().parents[2] / "kibana")
COMPARED_KEYS = ("type", "id", "attributes", "references")


class KibanaError(RuntimeError):
    """Kibana answered with an error, or an import reported failures."""


class KibanaUnavailable(KibanaError):
    """Kibana did not become available within the timeout."""


def kibana_url(info: ConnectionInfo) -> str:
    """Base URL of a Kibana connection (scheme from ``schema``, default port 5601, optional ``extra.space_id``)."""
    if not info.host:
        raise ConfigError(
            f"connection {info.conn_id!r} has no host; set e.g. "
            f'AIRFLOW_CONN_{info.conn_id.upper()}=\'{{"conn_type":"http","host":"127.0.0.1","port":5601}}\''
        )
    if "://" in info.host:
        base = info.host.rstrip("/")
        base = base if info.port is None else f"{base}:{info.port}"
    else:
        base = f"{info.schema or 'http'}://{info.host}:{info.port or 5601}"
    space = info.extra.get("space_id")
    return f"{base}/s/{space}" if space else base


def read_saved_objects(directory: Path = SAVED_OBJECTS_DIR) -> list[dict[str, Any]]:
    """Every saved object of ``directory/*.ndjson`` (one JSON object a line), in file order."""
    objects: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.ndjson")):
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.strip():
                try:
                    objects.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise KibanaError(f"{path.name}:{number} is not JSON: {exc}") from None
    return objects


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: obj.get(key) for key in COMPARED_KEYS}


class KibanaClient:
    """A small Kibana API client; construct cheaply, the HTTP session is created on first use."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Kibana URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._auth = (username, password) if username and password else None
        self._api_key = api_key
        self.request_timeout_s = request_timeout_s
        self._verify = verify
        self._session: Any = None

    @classmethod
    def from_connection(cls, info: ConnectionInfo) -> KibanaClient:
        """A client for an Airflow connection (login/password, or ``extra.api_key``)."""
        return cls(
            kibana_url(info),
            username=info.login,
            password=info.password,
            api_key=info.extra.get("api_key"),
            verify=info.extra.get("verify_certs", True),
        )

    def _http(self) -> Any:
        if self._session is None:
            import requests

            session = requests.Session()
            session.headers.update({"kbn-xsrf": "true", "Accept": "application/json"})
            if self._api_key:
                session.headers["Authorization"] = f"ApiKey {self._api_key}"
            elif self._auth:
                session.auth = self._auth
            session.verify = self._verify
            self._session = session
        return self._session

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self._http().request(method, self.base_url + path, timeout=self.request_timeout_s, **kwargs)
        if response.status_code not in ok:
            raise KibanaError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response

    def wait_until_available(self, timeout_s: float = 120.0, interval_s: float = 2.0) -> None:
        """Poll ``/api/status`` until the overall level is ``available``; raise :class:`KibanaUnavailable`."""
        import requests

        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                response = self._http().get(f"{self.base_url}/api/status", timeout=min(10.0, timeout_s))
                if response.status_code == 200:
                    level = response.json().get("status", {}).get("overall", {}).get("level")
                    if level == "available":
                        return
                    last = f"overall level {level!r}"
                elif response.status_code in (401, 403):
                    raise KibanaError(f"Kibana refused the credentials ({response.status_code}); check kibana_default")
                else:
                    last = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + interval_s > deadline:
                raise KibanaUnavailable(f"Kibana at {self.base_url} not available after {timeout_s:.0f}s ({last})")
            time.sleep(interval_s)

    def ensure_data_view(
        self, view_id: str = DATA_VIEW_ID, title: str = INDEX_PATTERN, time_field: str = "@timestamp"
    ) -> str:
        """Create the data view, or update its pattern/time field; return ``created``, ``updated`` or ``unchanged``."""
        wanted = {"title": title, "timeFieldName": time_field, "name": title}
        response = self._request("GET", f"/api/data_views/data_view/{view_id}", ok=(200, 404))
        if response.status_code == 404:
            body = {"data_view": {"id": view_id, **wanted}, "override": False}
            self._request("POST", "/api/data_views/data_view", json=body)
            logger.info("Kibana data view %s created for %s", view_id, title)
            return "created"
        current = response.json().get("data_view", {})
        if all(current.get(k) == v for k, v in wanted.items()):
            logger.info("Kibana data view %s already as wanted: nothing changed", view_id)
            return "unchanged"
        self._request("POST", f"/api/data_views/data_view/{view_id}", json={"data_view": wanted})
        logger.info("Kibana data view %s updated to %s", view_id, wanted)
        return "updated"

    def export_objects(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The current versions of ``objects`` (by type and id); ``None`` if any of them does not exist."""
        body = {"objects": [{"type": o["type"], "id": o["id"]} for o in objects], "includeReferencesDeep": False}
        response = self._request("POST", "/api/saved_objects/_export", ok=(200, 400, 404), json=body)
        if response.status_code != 200:
            return None
        lines = [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
        return [line for line in lines if "exportedCount" not in line]

    def import_objects(self, objects: list[dict[str, Any]], *, overwrite: bool = True) -> int:
        """Import saved objects (NDJSON, multipart) with overwrite; return the success count or raise."""
        payload = b"\n".join(orjson.dumps(o) for o in objects) + b"\n"
        response = self._request(
            "POST",
            "/api/saved_objects/_import",
            params={"overwrite": "true" if overwrite else "false"},
            files={"file": ("quoteflow.ndjson", payload, "application/ndjson")},
        )
        result = response.json()
        if not result.get("success") or result.get("errors"):
            errors = [
                f"{e.get('type')}/{e.get('id')}: {e.get('error', {}).get('type')}" for e in result.get("errors") or []
            ]
            raise KibanaError(f"saved objects import failed: {errors or result}")
        return int(result.get("successCount", 0))

    def sync_saved_objects(self, objects: list[dict[str, Any]]) -> str:
        """Import ``objects`` unless Kibana already holds identical ones; return ``imported`` or ``unchanged``."""
        current = self.export_objects(objects)
        if current is not None:
            have = {(o.get("type"), o.get("id")): _comparable(o) for o in current}
            if all(have.get((o["type"], o["id"])) == _comparable(o) for o in objects):
                logger.info("Kibana saved objects (%s) already as wanted: nothing changed", len(objects))
                return "unchanged"
        count = self.import_objects(objects)
        logger.info("Kibana saved objects imported with overwrite: %s", count)
        return "imported"


def setup_kibana(
    info: ConnectionInfo | None, *, timeout_s: float = 120.0, directory: Path = SAVED_OBJECTS_DIR
) -> dict[str, Any]:
    """Wait for Kibana, ensure the data view, sync ``kibana/*.ndjson``; skip (and say so) with no connection."""
    if info is None:
        logger.warning("no kibana_default connection configured: Kibana data view and dashboard skipped")
        return {"skipped": True, "changed": False}
    objects = read_saved_objects(directory)
    client = KibanaClient.from_connection(info)
    client.wait_until_available(timeout_s)
    data_view = client.ensure_data_view()
    saved = client.sync_saved_objects(objects)
    return {
        "skipped": False,
        "data_view": data_view,
        "saved_objects": saved,
        "objects": len(objects),
        "changed": data_view != "unchanged" or saved != "unchanged",
    }
