"""Elasticsearch clients that fail at once, naming the connection and the setting to fix.

Left alone, elasticsearch-py reports an unverifiable certificate as a ``TlsError`` (which the client
and quoteflow's bulk writer retry as an outage) and a refused login as an ``AuthenticationException``
that names neither the connection nor the setting. The node class made here turns both into
:class:`ElasticsearchAccessError` on the first request; raised from the node, it is not a transport
error, so neither the client's retries nor the indexer's retry budget delay it. TLS trouble that
can be passing (a reset or truncated handshake while a proxy restarts) stays a ``TlsError``.

:func:`quoteflow.settings.elasticsearch_client_args` passes this node class, so every
``Elasticsearch(**elasticsearch_client_args(info))`` gets it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

from elastic_transport import HttpHeaders, TlsError, Urllib3HttpNode
from elastic_transport._node import NodeApiResponse  # the node interface's return type (not re-exported)
from elastic_transport.client_utils import DEFAULT, DefaultType

from quoteflow.settings import ConfigError


class ElasticsearchAccessError(ConfigError):
    """Elasticsearch was reached but the connection's TLS or credentials settings do not fit it."""


class CheckedNode(Urllib3HttpNode):
    """A urllib3 node that raises :class:`ElasticsearchAccessError` for certificate failures and HTTP 401."""

    conn_id: str = ""
    url: str = ""
    credentials: str = "no credentials"
    ca_source: str = "the system's CA store"

    def perform_request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> NodeApiResponse:
        """Send one request; translate what no retry can fix into an error that says what to set."""
        try:
            response = super().perform_request(method, target, body, headers, request_timeout)
        except TlsError as exc:
            problem = _tls_problem(exc)
            if problem is None:
                raise
            raise ElasticsearchAccessError(self._tls_message(*problem)) from exc
        if response.meta.status == 401:
            raise ElasticsearchAccessError(
                f"Elasticsearch at {self.url} refused the credentials of connection {self.conn_id!r} "
                f"(HTTP 401 for {method} {target.split('?')[0]}; sent {self.credentials}): set the right "
                f"login and password, or extra.api_key, in connection {self.conn_id!r}"
            )
        return response

    def _tls_message(self, kind: str, reason: str) -> str:
        where = f"Elasticsearch at {self.url} (connection {self.conn_id!r})"
        if kind == "hostname":
            return (
                f"{where} presented a certificate for another name ({reason}): set the host of connection "
                f"{self.conn_id!r} to a name the certificate lists, or reissue the certificate for {self.url}"
            )
        if kind == "plain":
            return (
                f"{where} does not answer TLS ({reason}): if the server speaks plain HTTP, set the schema of "
                f"connection {self.conn_id!r} to http; else point host and port at its HTTPS port"
            )
        return (
            f"{where} presented a certificate that does not verify against {self.ca_source} ({reason}): set "
            f"extra.ca_certs of connection {self.conn_id!r} to the CA certificate file (PEM) that signed the "
            'server\'s certificate, e.g. "extra": {"ca_certs": "/path/to/ca.crt"}; or, only for a '
            'throwaway test node, "verify_certs": false'
        )


def node_class(conn_id: str, url: str, credentials: str, ca_certs: str | None) -> type[CheckedNode]:
    """A :class:`CheckedNode` subclass whose messages name ``conn_id``, ``url`` and what was sent."""
    attrs = {
        "conn_id": conn_id,
        "url": url,
        "credentials": credentials,
        "ca_source": f"extra.ca_certs ({ca_certs})" if ca_certs else "the system's CA store (no extra.ca_certs set)",
    }
    return type("CheckedNode", (CheckedNode,), attrs)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: causes, contexts, the transport's ``errors``, urllib3's ``reason``."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        stack.extend(getattr(current, "errors", ()) or ())
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _tls_problem(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, why)`` when no retry can help (kind: certificate, hostname, plain); ``None`` for passing trouble."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            return ("hostname" if "hostname mismatch" in reason.lower() else "certificate"), reason
        if isinstance(cause, ssl.SSLError) and cause.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"):
            return "plain", cause.reason
    return None
