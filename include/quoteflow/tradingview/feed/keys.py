"""Subscription keys as TradingView reads them: which instrument a plain or ``=``-spec key names."""

from __future__ import annotations

import orjson


def instrument_of(key: str) -> str | None:
    """The instrument a subscription key names: a plain key as is, a ``=``-spec by its ``symbol``; None if invalid.

    Keys: ``BINANCE:SOLUSDT``; ``={"adjustment":"splits","currency-id":"USD","symbol":"BINANCE:SOLUSDT"}``.
    The doc lists the spec keys ``symbol``, ``adjustment``, ``session``, ``currency-id``, ``metric``,
    ``backadjustment`` and ``replay`` but is silent on what TradingView does with other keys or other
    values, so only ``symbol`` is checked. It is also silent on lower-case and exchange-less keys and
    on a spec nested in a spec: none is shown accepted, so they name no instrument the feed knows.
    """
    if not key.startswith("="):
        return key
    try:
        spec = orjson.loads(key[1:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(spec, dict):
        return None
    symbol = spec.get("symbol")
    if not isinstance(symbol, str) or symbol.startswith("="):
        return None
    return symbol
