"""TradingView's quote websocket: framing, the quote session, a resilient client and a local feed server."""
