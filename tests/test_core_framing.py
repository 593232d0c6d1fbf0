"""Framer contract: both twins split a byte stream into the same messages."""

import orjson
import pytest

from _twins import load_core


def messages(items):
    """Framed items as parsed JSON (a fast path may hand back the line with its newline)."""
    return [orjson.loads(item) for item in items]


def feed_all(framer, chunks):
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_one_message_per_line(core):
    framer = core.Framer(1 << 20)
    assert messages(framer.feed(b'{"id":1}\n')) == [{"id": 1}]
    assert framer.buffered == 0


def test_many_messages_in_one_chunk(core):
    framer = core.Framer(1 << 20)
    chunk = b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(100))
    assert messages(framer.feed(chunk)) == [{"id": i} for i in range(100)]
    assert framer.buffered == 0


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_lines_split_across_chunks(core, step):
    framer = core.Framer(1 << 20)
    stream = b'{"id":1,"method":"a"}\n{"id":2,"params":{"s":"x\\ny"}}\n{"id":3}\n'
    chunks = [stream[i:i + step] for i in range(0, len(stream), step)]
    assert messages(feed_all(framer, chunks)) == [
        {"id": 1, "method": "a"}, {"id": 2, "params": {"s": "x\ny"}}, {"id": 3}]
    assert framer.buffered == 0


def test_partial_line_waits_for_its_newline(core):
    framer = core.Framer(1 << 20)
    assert framer.feed(b'{"id":1}\n{"id"') != []
    assert framer.buffered == len(b'{"id"')
    assert framer.feed(b":2") == []
    assert messages(framer.feed(b"}\n")) == [{"id": 2}]
    assert framer.buffered == 0


def test_empty_lines_are_not_messages(core):
    framer = core.Framer(1 << 20)
    out = framer.feed(b'\n\n\r\n{"id":1}\n\n{"id":2}\n')
    assert messages(out) == [{"id": 1}, {"id": 2}]


def test_whitespace_only_lines_are_not_messages(core):
    # A blank line padded with spaces is noise, not a malformed message to answer -32700.
    framer = core.Framer(1 << 20)
    out = framer.feed(b'   \n\t \r\n{"id":1}\n      \r\n')
    assert messages(out) == [{"id": 1}]


def test_crlf_line_endings(core):
    framer = core.Framer(1 << 20)
    out = feed_all(framer, [b'{"id":1}\r\n{"id":', b'2}\r', b'\n'])
    assert messages(out) == [{"id": 1}, {"id": 2}]


def test_line_at_the_limit_is_accepted_one_over_is_not(core):
    body = b'{"s":"' + b"a" * 50 + b'"}'
    framer = core.Framer(len(body))
    assert messages(framer.feed(body + b"\n")) == [{"s": "a" * 50}]
    # The same, arriving in pieces.
    assert messages(feed_all(framer, [body[:10], body[10:], b"\n"])) == [{"s": "a" * 50}]
    framer = core.Framer(len(body) - 1)
    (item,) = framer.feed(body + b"\n")
    assert type(item) is core.Oversized
    assert item.size == len(body)


def test_oversized_line_in_one_chunk_is_reported_with_its_head(core):
    framer = core.Framer(100)
    line = b'{"jsonrpc":"2.0","id":7,"params":{"s":"' + b"z" * 10_000 + b'"}}'
    out = framer.feed(line + b'\n{"id":8}\n')
    assert type(out[0]) is core.Oversized
    assert out[0].size == len(line)
    assert out[0].head == line[:core.HEAD_SIZE]
    assert messages(out[1:]) == [{"id": 8}]


def test_oversized_line_is_dropped_while_streaming(core):
    framer = core.Framer(1000)
    line = b'{"jsonrpc":"2.0","id":"big","params":{"s":"' + b"q" * 50_000 + b'"}}'
    chunks = [line[i:i + 300] for i in range(0, len(line), 300)]
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
        # Never holds more than the limit (plus one chunk) of a line it will drop.
        assert framer.buffered <= 1000 + 300
    assert out == []
    out = framer.feed(b'\n{"id":2}\n')
    assert type(out[0]) is core.Oversized
    assert out[0].size == len(line)
    # The head keeps the start of the message, where the id usually is.
    assert line.startswith(out[0].head)
    assert out[0].head.startswith(b'{"jsonrpc":"2.0","id":"big"')
    assert messages(out[1:]) == [{"id": 2}]
    # And the stream goes on normally.
    assert messages(framer.feed(b'{"id":3}\n')) == [{"id": 3}]
    assert framer.buffered == 0


def test_oversized_head_is_capped(core):
    framer = core.Framer(10_000)
    line = b'{"id":1,"s":"' + b"h" * 40_000 + b'"}'
    out = feed_all(framer, [line[:5000], line[5000:12000], line[12000:], b"\n"])
    (item,) = out
    assert item.size == len(line)
    assert item.head == line[:core.HEAD_SIZE]


def test_oversized_then_partial_then_whole(core):
    framer = core.Framer(50)
    out = feed_all(framer, [b'{"id":1,"pad":"' + b"p" * 100, b'"}\n{"id"', b':2}\n'])
    assert type(out[0]) is core.Oversized
    assert messages(out[1:]) == [{"id": 2}]


@pytest.mark.compiled
def test_twins_frame_identically():
    # The same stream, cut the same way, gives the same items from both twins.
    stream = (b'{"id":1}\n\n{"id":2,"s":"' + b"x" * 300 + b'"}\r\n{"id":3}\n' +
              b'{"id":4,"s":"' + b"y" * 5000 + b'"}\n{"id":5}')
    results = []
    for kind in ("c", "py"):
        c = load_core(kind)
        framer = c.Framer(1000)
        items = []
        for i in range(0, len(stream), 97):
            for item in framer.feed(stream[i:i + 97]):
                items.append(("over", item.size, item.head) if type(item) is c.Oversized
                             else ("msg", bytes(item).rstrip(b"\n")))
        results.append((items, framer.buffered))
    assert results[0] == results[1]
