"""Framing, heartbeats and packet classification against real captured frames and built edge cases."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from quoteflow.tradingview.protocol import (
    FAST_PATH_MAX_PACKETS,
    HEARTBEAT,
    HELLO,
    MALFORMED_LOGGED,
    MAX_MALFORMED_PER_MESSAGE,
    MESSAGE,
    TOO_MANY_MALFORMED,
    MalformedPacket,
    decode_message,
    encode_packet,
    frame,
    log_malformed,
    split_packets,
    utf16_length,
)

# Real captured frames, copied into the repository from the project's shared notes.
FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "tradingview" / "frames.jsonl"

# Line index in frames.jsonl → the packets that server message holds, in order (method, or kind).
_STUDY_18 = ["study_loading"] * 7 + ["du", "study_completed", "study_loading", "du", "study_completed"]
_STUDY_18 += ["du", "study_completed"]
EXPECTED_SERVER_LINES: dict[int, list[str]] = {
    0: ["hello"],
    14: ["qsd", "quote_completed"],
    18: _STUDY_18,
    19: ["series_loading", "series_timeframe", "series_timeframe", "series_completed"],
    20: ["qsd"],
    21: ["qsd", "qsd", "qsd"],
    22: ["heartbeat"],
    24: ["heartbeat"],
    25: ["qsd", "qsd", "qsd"],
    26: ["timescale_update", "du", "study_completed"],
    27: [
        "series_loading",
        "symbol_resolved",
        "qsd",
        "timescale_update",
        "series_completed",
        "qsd",
        "qsd",
        "qsd",
        "quote_completed",
        "series_loading",
    ],
    28: ["hello"],
    33: ["qsd"],
    34: ["qsd"],
    37: ["series_loading"],
    38: ["qsd", "qsd"],
    39: ["qsd"],
    40: ["du", "qsd"],
    42: ["protocol_switched"],
    43: ["series_completed"],
    44: ["study_error"],
    46: ["depth_symbol_error"],
    47: ["qsd"],
    48: ["du"],
    49: ["qsd"],
    50: ["series_timeframe"],
    51: ["series_completed"],
    52: ["series_completed"],
    56: ["heartbeat"],
    58: ["heartbeat"],
    59: ["hello"],
    60: ["protocol_error"],
    62: ["critical_error"],
    63: ["series_loading"],
    69: ["heartbeat"],
}
UNFRAMED_LINE = 70  # stored payload-only in the source: no ~m~ prefix at all


def _lines() -> list[dict]:
    return [json.loads(line) for line in FRAMES.read_text(encoding="utf-8").splitlines()]


def test_every_server_line_is_covered_by_the_table():
    server = {i for i, rec in enumerate(_lines()) if rec["direction"] == "server->client"}
    assert server == set(EXPECTED_SERVER_LINES) | {UNFRAMED_LINE}
    assert len(server) == 36


@pytest.mark.parametrize("index", sorted(EXPECTED_SERVER_LINES))
def test_server_line_decodes_into_its_packets(index):
    raw = _lines()[index]["raw"]
    decoded = decode_message(raw)
    assert decoded.malformed == []
    assert [p.method or p.kind for p in decoded.packets] == EXPECTED_SERVER_LINES[index]
    # Re-framing every payload rebuilds the message byte for byte: lengths were read in UTF-16 units.
    assert "".join(frame(p.raw) for p in decoded.packets) == raw


def test_unframed_sample_is_malformed_until_framed():
    raw = _lines()[UNFRAMED_LINE]["raw"]
    decoded = decode_message(raw)
    assert decoded.packets == []
    assert [m.reason for m in decoded.malformed] == ["no_prefix"]
    framed = decode_message(frame(raw))
    assert [(p.method, p.params[1]) for p in framed.packets] == [("critical_error", "invalid_parameters")]


@pytest.mark.parametrize("index", [i for i, kinds in EXPECTED_SERVER_LINES.items() if kinds == ["heartbeat"]])
def test_every_heartbeat_is_echoed_exactly(index):
    raw = _lines()[index]["raw"]
    (packet,) = decode_message(raw).packets
    assert packet.kind == HEARTBEAT
    assert frame(packet.raw) == raw


def test_client_heartbeat_reply_matches_the_capture():
    lines = _lines()
    assert frame(decode_message(lines[22]["raw"]).packets[0].raw) == lines[23]["raw"]


def test_heartbeats_inside_a_concatenation_are_found_packet_by_packet():
    qsd = '{"m":"qsd","p":["qs_a",{"n":"X:Y","s":"ok","v":{"lp":1.5}}]}'
    message = frame(qsd) + frame("~h~41") + frame(qsd) + frame("~h~42")
    packets = decode_message(message).packets
    assert [p.kind for p in packets] == [MESSAGE, HEARTBEAT, MESSAGE, HEARTBEAT]
    assert [frame(p.raw) for p in packets if p.kind == HEARTBEAT] == ["~m~5~m~~h~41", "~m~5~m~~h~42"]


def test_utf16_length_rule_for_non_ascii_payload():
    # Hangul (BMP: one unit each), an emoji (outside the BMP: two units) and a plain ASCII tail.
    payload = '{"m":"qsd","p":["qs_a",{"n":"KRX:005930","s":"ok","v":{"description":"삼성전자 🚀","lp":1.0}}]}'
    units = len(payload.encode("utf-16-le")) // 2
    assert units == len(payload) + 1  # the emoji counts twice
    assert utf16_length(payload) == units
    assert frame(payload).startswith(f"~m~{units}~m~")
    message = frame(payload) + frame("~h~3") + frame(payload)
    decoded = decode_message(message)
    assert decoded.malformed == []
    assert [p.kind for p in decoded.packets] == [MESSAGE, HEARTBEAT, MESSAGE]
    assert decoded.packets[0].params[1]["v"]["description"] == "삼성전자 🚀"
    # A byte-counting peer (UTF-8 length) is caught, and the following packet still decodes.
    wrong = f"~m~{len(payload.encode())}~m~{payload}" + frame("~h~4")
    bad = decode_message(wrong)
    assert [p.raw for p in bad.packets] == ["~h~4"]
    assert len(bad.malformed) == 1


def test_production_hangul_frame_counts_characters_not_bytes():
    payload = '{"m":"qsd","p":["qs_x",{"n":"KRX:005930","s":"ok","v":{"local_description":"삼성전자보통주"}}]}'
    assert utf16_length(payload) == len(payload) < len(payload.encode())


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("~m~x1~m~{}", "bad_length"),
        ("~m~9999~m~{}", "overlong_length"),
        ("~m~1234567890~m~{}", "bad_length"),
        ('~m~5~m~{"m":"qsd"}', "length_mismatch"),
        ("~m~8~m~not json", "not_json"),
        ('~m~29~m~{"m":"no_such_method","p":[]}', "unknown_method"),
        ('~m~13~m~{"foo":"bar"}', "unknown_packet"),
        ("~m~5~m~~h~ab", "bad_heartbeat"),
        ('~m~14~m~{"m":"qsd","p"', "not_json"),
    ],
)
def test_malformed_packet_is_skipped_and_the_rest_decodes(message, reason, caplog):
    good = frame('{"m":"quote_completed","p":["qs_a","X:Y"]}')
    decoded = decode_message(good + message + good)
    assert [p.method for p in decoded.packets] == ["quote_completed", "quote_completed"]
    assert [m.reason for m in decoded.malformed] == [reason]
    with caplog.at_level(logging.WARNING):
        log_malformed(decoded.malformed, "test")
    assert reason in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def test_truncated_final_packet_is_never_handed_on():
    payloads, malformed = split_packets(frame("~h~1") + '~m~40~m~{"m":"qsd","p":["qs_a"')
    assert payloads == ["~h~1"]
    assert [m.reason for m in malformed] == ["overlong_length"]


def test_hello_is_recognised():
    (packet,) = decode_message(_lines()[59]["raw"]).packets
    assert packet.kind == HELLO
    assert packet.data is not None and packet.data["protocol"] == "json"


def test_outbound_packets_are_compact_ascii_json():
    raw = encode_packet("quote_add_symbols", ["qs_abc", "BINANCE:SOLUSDT", "KRX:삼성"])
    assert raw.isascii()
    assert " " not in raw
    assert raw == '~m~77~m~{"m":"quote_add_symbols","p":["qs_abc","BINANCE:SOLUSDT","KRX:\\uc0bc\\uc131"]}'
    assert decode_message(raw).packets[0].params[2] == "KRX:삼성"


def test_encode_matches_the_captured_client_frames():
    lines = _lines()
    assert encode_packet("set_locale", ["en", "US"]) == lines[1]["raw"]
    assert encode_packet("set_auth_token", ["unauthorized_user_token"]) == lines[30]["raw"]
    assert encode_packet("quote_create_session", ["qs_dnsa2OmMSwkH"]) == lines[68]["raw"]


def test_payload_containing_the_prefix_pattern_is_cut_by_length_not_by_pattern():
    tricky = '{"m":"qsd","p":["qs_a",{"n":"X:Y","s":"ok","v":{"description":"a~m~3~m~abc~m~"}}]}'
    message = frame(tricky) + frame("~h~9") + frame(tricky)
    decoded = decode_message(message)
    assert decoded.malformed == []
    assert [p.raw for p in decoded.packets] == [tricky, "~h~9", tricky]
    assert decoded.packets[0].params[1]["v"]["description"] == "a~m~3~m~abc~m~"


def test_a_message_of_garbage_costs_bounded_work_and_says_how_much_it_skipped():
    flood = "~m~9~m~" * 100_000
    payloads, malformed = split_packets(flood)
    assert payloads == []
    assert len(malformed) == MAX_MALFORMED_PER_MESSAGE + 1
    assert {m.reason for m in malformed[:-1]} == {"length_mismatch"}
    assert malformed[-1].reason == TOO_MANY_MALFORMED
    assert malformed[-1].excerpt.startswith(f"{len(flood) - 7 * MAX_MALFORMED_PER_MESSAGE} characters skipped: ~m~9")
    assert len(malformed[-1].excerpt) < 200


def test_malformed_packets_are_logged_one_by_one_up_to_a_limit_then_counted(caplog):
    bad = [MalformedPacket("not_json", f"x{i}") for i in range(MALFORMED_LOGGED + 40)]
    bad += [MalformedPacket("bad_length", "y"), MalformedPacket(TOO_MANY_MALFORMED, "123 characters skipped: z")]
    with caplog.at_level(logging.WARNING):
        log_malformed(bad, "feed")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == MALFORMED_LOGGED + 1
    assert lines[0] == "skipped malformed packet from feed (not_json): 'x0'"
    assert lines[-1] == (
        "skipped 42 more malformed packet(s) from feed in the same message "
        "(bad_length=1, not_json=40, too_many_malformed=1); gave up on the rest of the message: "
        "'123 characters skipped: z'"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        log_malformed(bad[:MALFORMED_LOGGED], "feed")
    assert len(caplog.records) == MALFORMED_LOGGED  # no count line when every packet was logged


def test_a_message_with_more_packets_than_the_fast_path_takes_still_decodes_exactly():
    message = frame("~h~1") * (FAST_PATH_MAX_PACKETS + 1)
    payloads, malformed = split_packets(message)
    assert payloads == ["~h~1"] * (FAST_PATH_MAX_PACKETS + 1) and malformed == []
