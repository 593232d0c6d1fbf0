"""Logs and forensics: the parts that need no server."""

import errno
import hashlib
import os
import threading
import time

import orjson
import pytest
from _twins import load_core

from bemcp.logs import default_log_dir
from bemcp.logs.files import LogFiles, generations
from bemcp.logs.collector import COUNT, RECORD
from bemcp.percentiles import percentile


CARE_SECONDS = 30.0   # the longest a loaded machine may keep a log thread from running


def directory_bytes(path):
    total = 0
    for name in os.listdir(path):
        if not name.startswith("."):
            try:
                total += os.path.getsize(os.path.join(path, name))
            except FileNotFoundError:   # rotated away meanwhile
                pass
    return total


def wait_for(predicate, seconds):
    """True once ``predicate()`` holds; False if it still does not after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def batch(calls):
    """A T frame's payload as Dispatcher.take_finished gives it: ((id, name, args), start, end, state, in, out)."""
    records = b"".join(RECORD.pack(*values) for _, *values in calls)
    lines = b",".join(orjson.dumps({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                    "params": {"name": name, "arguments": args}})
                      for (id, name, args), *_ in calls)
    return COUNT.pack(len(calls)), records, lines


def test_task_lines_name_every_state_and_escape_what_they_carry(core):
    calls = [((i, "echo", {"n": i}), 1.0, 1.5, state, 10, 20) for i, state in enumerate(range(8))]
    calls.append((("id \"quoted\"\n", "t\u00e9l\u00e9", None), 2.0, 2.0, 1, 0, -1))
    calls.append(((2 ** 62, "big", {"b": 1, "a": [1.5, None, "}{\"]"]}), 3.0, 3.25, 2, 5, 0))
    calls.append(((-2.5e-3, "float_id", {}), 4.0, 4.0, 1, 1, 1))
    lines, count, errors = core.format_tasks(b"".join(batch(calls)), 100.0, 42, {1: {"exit_code": 0}}, KEY)
    records = [orjson.loads(line) for line in lines.splitlines()]
    assert count == len(records) == 11 and errors == 8   # all but the three "ok" rows
    assert records[10]["id"] == -2.5e-3 and records[10]["tool"] == "float_id"
    assert [r["status"] for r in records[:7]] == list(core.STATE_NAMES) and records[7]["status"] == "7"
    assert records[1]["exit_code"] == 0 and records[0]["time"] == 101.5 and records[0]["duration_ms"] == 500.0
    odd, big = records[8], records[9]
    assert odd["id"] == 'id "quoted"\n' and odd["tool"] == "t\u00e9l\u00e9" and odd["arg_bytes"] == 4   # null
    assert odd["bytes_in"] is None and odd["bytes_out"] is None
    assert big["id"] == 2 ** 62 and big["bytes_out"] is None and big["duration_ms"] == 250.0
    # The digest is keyed BLAKE2b of the arguments exactly as the client sent them.
    raw = orjson.dumps({"b": 1, "a": [1.5, None, "}{\"]"]})
    assert big["arg_digest"] == blake(raw) and big["arg_bytes"] == len(raw)
    assert records[8]["arg_digest"] == blake(b"null") and records[10]["arg_digest"] == blake(b"{}")
    with pytest.raises(ValueError):
        core.format_tasks(COUNT.pack(3) + b"x" * 10, 0.0, 1, {}, KEY)


KEY = bytes(range(16))


def blake(raw, key=KEY):
    return hashlib.blake2b(raw, key=key, digest_size=8).hexdigest()


def test_argument_digests_are_keyed_blake2b_in_both_twins(core):
    for size in (1, 2, 50, 127, 128, 129, 256, 257, 600, 5000):   # block edges, cached and not
        raw = os.urandom(size)
        for key in (KEY, os.urandom(64), b"k" * 17):
            assert core.digest(key, raw) == blake(raw, key).encode()


LINES = [   # request lines as clients may write them: the twins must read them alike
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}',
    rb' { "id" : "a\\\"b" , "params" : { "arguments" : { "k" : [ 1 , { "x" : "}]" } ] } , "name" : "t" } } ',
    b'{"params":{"name":"x"},"id":-3.5e2}',
    b'{"id":null,"params":[1,2]}',
    b'{"id":7,"params":{"name":"first","arguments":{"a":1}},"params":{"name":"second"}}',
    rb'{"\u0069d":9,"params":{"name":"escaped key","arguments":{"z":true}}}',
    rb'{"id":true,"params":{"name":"n","arguments":null,"extra":{"deep":[[[]]],"s":"\\"}}}',
    b'{}',
]


@pytest.mark.compiled
def test_both_twins_write_the_same_lines_for_odd_requests():
    records = b"".join(RECORD.pack(1.0 + i, 1.0 + i + i * 0.0004999, i % 7, i * 10, i * 20 - 30)
                       for i in range(len(LINES)))
    payload = COUNT.pack(len(LINES)) + records + b",\n".join(LINES)
    outputs = []
    for kind in ("c", "py"):
        got = load_core(kind).format_tasks(payload, 1.7e9 + 0.0005, 7, {2: {"exit_code": 1}}, KEY)
        outputs.append(got)
        lines = [orjson.loads(line) for line in got[0].splitlines()]
        assert [r["id"] for r in lines] == [1, 'a\\"b', -350.0, None, 7, 9, True, None]
        assert [r["tool"] for r in lines] == ["echo", "t", "x", None, "second", "escaped key", "n", None]
        assert lines[5]["arg_bytes"] == len(b'{"z":true}') and lines[6]["arg_bytes"] == len(b"null")
        assert lines[4]["arg_bytes"] == 2 and lines[2]["exit_code"] == 1   # the last params counts
    assert outputs[0] == outputs[1]


def test_default_log_dir_is_the_user_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_log_dir() == str(tmp_path / "state" / "bemcp")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_log_dir() == str(tmp_path / "home" / ".local" / "state" / "bemcp")


def test_rotation_keeps_the_directory_under_its_cap_through_a_long_burst(tmp_path):
    cap = 256 * 1024
    files = LogFiles(str(tmp_path), max_file=32 * 1024, max_total=cap)
    line = b'{"time":1,"tool":"echo","status":"ok","padding":"' + b"p" * 180 + b'"}\n'
    batch = line * 20
    crash = files.write_new("crash-20250101T000000000Z-1.json", b"{}" * 1000)
    assert crash is not None
    written = 0
    for i in range(2000):   # ~8.6 MB, 34 times the cap
        assert files.append("tasks" if i % 5 else "perf", batch, 20)
        written += len(batch)
        assert directory_bytes(str(tmp_path)) <= cap
    files.close()
    assert written > 30 * cap
    rotated = generations(str(tmp_path), "tasks")
    assert len(rotated) > 2 and rotated[-1].endswith("tasks.log")
    # The newest records survive: the last batch ends the live file (or, if that
    # batch filled it, the newest rotated one).
    newest = b""
    for path in rotated[-2:]:
        with open(path, "rb") as f:
            newest += f.read()
    assert newest.endswith(batch)
    # Rotated generations are numbered newest first and each is whole lines.
    for path in rotated:
        with open(path, "rb") as f:
            data = f.read()
        assert data == b"" or data.endswith(b"\n") and all(orjson.loads(x) for x in data.splitlines())
    assert files.dropped == 0


def test_rotation_follows_a_file_another_process_rotated(tmp_path):
    a = LogFiles(str(tmp_path), max_file=4096, max_total=1 << 20)
    b = LogFiles(str(tmp_path), max_file=4096, max_total=1 << 20)
    a.append("tasks", b"a" * 100 + b"\n")
    b.append("tasks", b"b" * 5000 + b"\n")     # b rotates tasks.log away
    a.append("tasks", b"c" * 100 + b"\n")      # a must write to the new tasks.log
    a.close()
    b.close()
    with open(tmp_path / "tasks.log", "rb") as f:
        assert f.read() == b"c" * 100 + b"\n"


def test_an_unwritable_directory_warns_once_and_counts_drops(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    warnings = []
    files = LogFiles(str(blocker / "logs"), warn=warnings.append)
    for _ in range(5):
        assert files.append("tasks", b"{}\n", 3) is False
    assert files.write_new("crash-x.json", b"{}") is None
    assert len(warnings) == 1 and "cannot write logs" in warnings[0]
    assert files.dropped == 16


def test_a_full_disk_warns_once_counts_drops_and_recovers(tmp_path, monkeypatch):
    warnings = []
    files = LogFiles(str(tmp_path), warn=warnings.append)
    assert files.append("tasks", b"{}\n")
    full = True

    def write(fd, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        LogFiles._write(fd, data)
    monkeypatch.setattr(files, "_write", write)
    for _ in range(4):
        assert files.append("tasks", b"{}\n", 2) is False
    assert files.dropped == 8 and len(warnings) == 1 and "disk is full" in warnings[0]
    full = False
    monkeypatch.setattr("bemcp.logs.files.RETRY_SECONDS", 0.0)
    files._retry_at = 0.0
    assert files.append("tasks", b"[]\n")
    files.close()
    assert (tmp_path / "tasks.log").read_bytes() == b"{}\n[]\n"
    assert len(warnings) == 1


def test_the_task_writer_writes_rows_without_argument_values(core, tmp_path):
    files = LogFiles(str(tmp_path))
    writer = core.TaskWriter(files, 1234, KEY, 1 << 20)
    calls = [   # (id, name, arguments), start, end, state, bytes in, bytes out
        ((7, "run_command", {"cmd": "s3cr3t"}), 10.0, 10.25, 1, 99, 140),
        (("abc\"\n", "echo", {"text": "s3cr3t"}), 11.0, 16.0, 3, 0, -1),
        ((9, "echo", {"text": "s3cr3t"}), 11.0, 11.000002, 1, 50, 60),
    ]
    _, records, lines = batch(calls)
    details = [(0, {"exit_code": 3, "ignored": {"nested": 1}, "status": "no"}), (1, {"limit_s": 5.0})]
    assert writer.submit(3, records, lines, details, 1000.0)
    writer.close()
    assert writer.stats() == (3, 1, 0)
    text = (tmp_path / "tasks.log").read_text()
    assert "s3cr3t" not in text
    first, second, third = [orjson.loads(x) for x in text.splitlines()]
    assert first == {"time": 1010.25, "pid": 1234, "id": 7, "tool": "run_command", "status": "ok",
                     "duration_ms": 250.0, "arg_bytes": len(b'{"cmd":"s3cr3t"}'),
                     "arg_digest": blake(b'{"cmd":"s3cr3t"}'), "bytes_in": 99, "bytes_out": 140, "exit_code": 3}
    assert second["status"] == "timed_out" and second["limit_s"] == 5.0 and second["id"] == "abc\"\n"
    assert second["bytes_in"] is None and second["bytes_out"] is None and second["duration_ms"] == 5000.0
    assert "exit_code" not in second
    # Same arguments, same digest; microsecond durations survive the formatting.
    assert third["arg_digest"] == second["arg_digest"] != first["arg_digest"]
    assert third["duration_ms"] == 0.002 and third["time"] == 1011.0


def test_the_task_writer_rotates_caps_and_drops_what_it_cannot_hold(core, tmp_path):
    files = LogFiles(str(tmp_path), max_file=16 * 1024, max_total=256 * 1024)
    wake_r, wake_w = os.pipe()
    writer = core.TaskWriter(files, 1, KEY, 1 << 30, wake_w)
    done = threading.Event()

    def caretaker():   # what the logs' feeder thread does: care for the directory when poked
        while True:
            os.read(wake_r, 1)
            if done.is_set():
                return
            writer.care()
    helper = threading.Thread(target=caretaker, daemon=True)
    helper.start()
    calls = [((i, "echo", {"text": "x" * 100}), 1.0, 2.0, 1, 10, 10) for i in range(20)]
    _, records, lines = batch(calls)
    cap = 256 * 1024 + 64 * 1024   # the cap, give or take a tick

    def back_under_cap():
        return writer.queued == 0 and directory_bytes(str(tmp_path)) <= cap
    try:
        for _ in range(1000):   # ~3.5 MB of lines through a 256 KiB directory, paced like a server's ticks
            assert writer.submit(20, records, lines, None, 0.0)
            time.sleep(0.0005)
            # A loaded machine may keep the writer and the caretaker from running for seconds:
            # past the cap, the directory must be back under it once the writer has written
            # what it holds and the caretaker has run (without care it never would).
            if directory_bytes(str(tmp_path)) > cap:
                assert wait_for(back_under_cap, CARE_SECONDS), "the directory stayed over its cap"
    finally:   # a failure above must not leave the caretaker blocked on its pipe
        writer.close()
        done.set()
        os.write(wake_w, b"x")
        helper.join()
        os.close(wake_r)
        os.close(wake_w)
    writer.care()
    assert directory_bytes(str(tmp_path)) <= 256 * 1024
    assert len(generations(str(tmp_path), "tasks")) > 2
    for path in generations(str(tmp_path), "tasks"):
        with open(path, "rb") as f:
            assert all(orjson.loads(x)["tool"] == "echo" for x in f.read().splitlines())
    # A writer given no time to drain a full queue is stuck: past the limit, batches are
    # dropped and counted, and nothing waits beyond it.
    tight = core.TaskWriter(LogFiles(str(tmp_path / "tight")), 1, KEY, 1, wait=0.0)
    accepted = sum(tight.submit(20, records, lines, None, 0.0) for _ in range(500))
    tight.close()
    assert tight.dropped == (500 - accepted) * 20 and accepted >= 1
    assert len((tmp_path / "tight" / "tasks.log").read_bytes().splitlines()) == accepted * 20


class SlowFiles(LogFiles):
    """A log directory whose first write stalls, as a disk or a starved thread can."""

    def __init__(self, directory, stall):
        super().__init__(directory)
        self.stall = stall

    def _stalled(self):
        stall, self.stall = self.stall, 0.0
        time.sleep(stall)

    def make_room(self, room):   # the compiled writer asks for room before its first write
        self._stalled()
        return super().make_room(room)

    def append(self, name, data, records=1):   # the pure writer appends through here
        self._stalled()
        return super().append(name, data, records)


def test_a_full_queue_makes_the_submitter_wait_and_loses_no_row(core, tmp_path):
    calls = [((i, "echo", {"text": "x" * 50}), 1.0, 2.0, 1, 10, 10) for i in range(20)]
    _, records, lines = batch(calls)
    limit = 4 * (len(records) + len(lines))   # four batches
    writer = core.TaskWriter(SlowFiles(str(tmp_path), 0.3), 1, KEY, limit)
    began = time.monotonic()
    assert all(writer.submit(20, records, lines, None, 0.0) for _ in range(200))
    submitted = time.monotonic() - began
    writer.close()
    assert writer.dropped == 0 and writer.stats()[2] == 0
    assert writer.waits >= 1 and 0.1 < writer.wait_seconds <= submitted
    ids = [orjson.loads(x)["id"] for x in (tmp_path / "tasks.log").read_bytes().splitlines()]
    assert ids == list(range(20)) * 200


def test_a_stuck_writer_costs_the_submitter_one_bounded_wait(core, tmp_path):
    _, records, lines = batch([((i, "echo", {}), 1.0, 2.0, 1, 10, 10) for i in range(20)])
    writer = core.TaskWriter(SlowFiles(str(tmp_path), 1.5), 1, KEY, 1, wait=0.2)
    results = [writer.submit(20, records, lines, None, 0.0) for _ in range(50)]
    assert 0.15 < writer.wait_seconds < 1.0 and writer.waits == 1   # then it drops without waiting
    writer.close()
    accepted = sum(results)
    assert results[0] and writer.dropped == (50 - accepted) * 20 and accepted < 50
    assert len((tmp_path / "tasks.log").read_bytes().splitlines()) == accepted * 20


def test_the_task_writer_warns_once_about_an_unwritable_directory(core, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    warnings = []
    writer = core.TaskWriter(LogFiles(str(blocker / "logs"), warn=warnings.append), 1, KEY, 1 << 20)
    _, records, lines = batch([((1, "echo", {}), 1.0, 2.0, 1, 10, 10)])
    for _ in range(3):
        assert writer.submit(1, records, lines, None, 0.0)
        time.sleep(0.05)
    writer.close()
    assert writer.dropped == 3 and len(warnings) == 1 and "cannot write logs" in warnings[0]


def test_percentiles_are_by_nearest_rank_everywhere():
    """perf.log's lag p99, `bemcp logs`' durations and `bemcp bench` use this one definition."""
    hundred = list(range(1, 101))
    assert [percentile(hundred, q) for q in (0, 1, 50, 99, 100)] == [1, 1, 50, 99, 100]
    assert [percentile([5, 7, 9], q) for q in (33, 34, 66, 67, 99)] == [5, 7, 7, 9, 9]
    assert percentile([], 50) is None and percentile([3.5], 99) == 3.5
    from bemcp.bench import stats
    from bemcp.logs import collector, summary
    assert stats.percentile is summary.percentile is collector.percentile is percentile
