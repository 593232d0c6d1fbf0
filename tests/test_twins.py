"""The compiled core and its pure-Python twins behave alike, not only look alike.

- every public name of each twin pair has the same signature and the same kind
  (method, or attribute: read-only in both or writable in both);
- random message streams, split at random points, give byte-identical output from
  both Dispatchers and identical frames from both Framers;
- both accept (or refuse) the same input types;
- the compiled modules were built from the sources on disk.
"""

import asyncio
import inspect
import random
import re

import orjson
import pytest

from _twins import load_core

from bemcp._core._consts import RECENT
from bemcp.logs.files import LogFiles

pytestmark = pytest.mark.compiled

C, PY = load_core("c"), load_core("py")


# -- signatures and attribute kinds ---------------------------------------------------


def _signature(obj):
    """The parameters of a callable (a class: its constructor) as (name, default) pairs."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters.values()
    except ValueError:
        params = None
    if params is None or [p.kind for p in params][1:] == [inspect.Parameter.VAR_POSITIONAL,
                                                          inspect.Parameter.VAR_KEYWORD]:
        # A compiled class's constructor: read the signature Cython embeds in its docstring.
        head = (obj.__doc__ or "").split("\n", 1)[0]
        match = re.fullmatch(r"\w+\((.*)\)", head)
        assert match, f"no signature for {obj!r}"
        pairs = [("self", None)]
        for part in filter(None, (p.strip() for p in match.group(1).split(","))):
            name, _, default = part.partition("=")
            pairs.append((name.split()[-1], _default(default, obj) if default else None))
        return pairs
    return [(p.name, None if p.default is inspect.Parameter.empty else repr(p.default)) for p in params]


def _default(text, obj):
    # A default as Cython wrote it ("0x4000000", "WAIT_SECONDS"), evaluated in its module.
    module = inspect.getmodule(obj)
    return repr(eval(text, vars(module) if module else {}))


def _kind(obj, name):
    """How ``obj.name`` behaves: a method, or an attribute that is read-only or writable."""
    if inspect.isroutine(getattr(type(obj), name, None)):
        return "method"
    try:
        setattr(obj, name, getattr(obj, name))
    except (AttributeError, TypeError):
        return "read-only"
    return "writable"


def _closed(writer):
    writer.close()
    return writer


def _instances(core, loop, tmp_path):
    table = core.InFlightTable(loop)
    return {
        "Dispatcher": core.Dispatcher(loop, None, 100),
        "ToolSlot": core.ToolSlot("n", None, None, None),
        "Framer": core.Framer(10),
        "Oversized": core.Oversized(1, b"x"),
        "InFlightTable": table,
        "Request": table.open(1, "m", None, None),
        "TaskWriter": _closed(core.TaskWriter(LogFiles(str(tmp_path / core.kind)), 1, b"k" * 16, 1)),
        "_RecentMessages": core.modules["_dispatch"]._RecentMessages(),
    }


def test_twin_classes_have_the_same_signatures_and_attribute_kinds(tmp_path):
    loop = asyncio.new_event_loop()
    try:
        c, py = _instances(C, loop, tmp_path), _instances(PY, loop, tmp_path)
        differences = []
        for cls in c:
            if _signature(type(c[cls])) != _signature(type(py[cls])):
                differences.append(f"{cls}(): {_signature(type(c[cls]))} != {_signature(type(py[cls]))}")
            names = {n for n in dir(c[cls]) + dir(py[cls]) if not n.startswith("_")}
            for name in sorted(names):
                if not (hasattr(c[cls], name) and hasattr(py[cls], name)):
                    differences.append(f"{cls}.{name}: in one twin only")
                    continue
                kinds = _kind(c[cls], name), _kind(py[cls], name)
                if kinds[0] != kinds[1]:
                    differences.append(f"{cls}.{name}: {kinds[0]} in C, {kinds[1]} in the twin")
                elif kinds[0] == "method":
                    sigs = _signature(getattr(type(c[cls]), name)), _signature(getattr(type(py[cls]), name))
                    if sigs[0] != sigs[1]:
                        differences.append(f"{cls}.{name}: {sigs[0]} != {sigs[1]}")
        assert not differences, "\n".join(differences)
    finally:
        loop.close()


def test_twin_modules_export_the_same_names_and_values():
    differences = []
    for module in C.modules:
        c, py = C.modules[module], PY.modules[module]
        for name in sorted({n for n in dir(c) + dir(py) if not n.startswith("_")}):
            if not (hasattr(c, name) and hasattr(py, name)):
                obj = getattr(c, name, None) or getattr(py, name)
                if getattr(obj, "__module__", None) in (c.__name__, py.__name__):   # not an import
                    differences.append(f"{module}.{name}: in one twin only")
                continue
            a, b = getattr(c, name), getattr(py, name)
            if inspect.ismodule(a) or inspect.isclass(a):
                continue
            if callable(a):
                if _signature(a) != _signature(b):
                    differences.append(f"{module}.{name}: {_signature(a)} != {_signature(b)}")
            elif a != b:
                differences.append(f"{module}.{name}: {a!r} != {b!r}")
    assert not differences, "\n".join(differences)


# -- differential: random message streams through both twins --------------------------

LIMIT = 400   # bytes per message: small, so oversized lines are common


def _ids(rnd):
    return rnd.choice([
        rnd.randrange(-5, 50), rnd.randrange(2**62), -(2**63), 1.5, -0.0, 1e300, "", "a",
        "ü\u2028\"\\", "x" * rnd.randrange(1, 40), None, True, [1], {"a": 1},
    ])


def _params(rnd):
    return rnd.choice([None, {}, {"x": rnd.randrange(9)}, [1, "two"], "text", 7,
                       {"nested": {"deep": [None, True, 1.25]}}, {"blob": "y" * rnd.randrange(500)}])


def _message(rnd, depth=0):
    roll = rnd.random()
    if roll < 0.08 and depth == 0:
        return [_message(rnd, 1) for _ in range(rnd.randrange(0, 5))]
    if roll < 0.11:
        return rnd.choice([7, "s", None, [], [[]]])
    msg = {"jsonrpc": "2.0"} if rnd.random() < 0.9 else rnd.choice([{}, {"jsonrpc": "1.0"}, {"jsonrpc": 2}])
    if rnd.random() < 0.85:
        msg["id"] = _ids(rnd)
    kind = rnd.random()
    if kind < 0.45:
        msg["method"] = "tools/call"
        name = rnd.choice(["add", "eager", "suspends", "raises", "refuses", "nope", 3, None])
        params = {"name": name}
        if rnd.random() < 0.9:
            params["arguments"] = rnd.choice([{"a": rnd.randrange(9)}, {}, None, [1], "x",
                                              {"pad": "z" * rnd.randrange(300)}])
        msg["params"] = rnd.choice([params, params, params, [], "p", None])
    elif kind < 0.8:
        msg["method"] = rnd.choice(["echo", "fail", "boom", "later", "missing", "note", 5, None])
        params = _params(rnd)
        if params is not None or rnd.random() < 0.5:
            msg["params"] = params
    else:
        msg.pop("method", None)
        msg[rnd.choice(["result", "error"])] = rnd.choice([{"ok": 1}, {"code": 1, "message": "m"}, "e", None])
    return msg


MALFORMED = [b'{"jsonrpc":', b"not json", b'{"jsonrpc":"2.0","id":9,"method":"echo","params":{"n":1e999}}',
             b"{", b"}", b"\xff\xfe", b'{"id": 3, "method": "echo"', b"[1,", b"   ", b"", b"\t"]


def _stream(rnd, count):
    lines = []
    for _ in range(count):
        roll = rnd.random()
        if roll < 0.12:
            lines.append(rnd.choice(MALFORMED))
        elif roll < 0.18:   # oversized, with its id up front so it can be recovered
            lines.append(b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":{"p":"%s"}}'
                         % (rnd.randrange(99), b"q" * rnd.randrange(LIMIT, 3 * LIMIT)))
        else:
            msg = _message(rnd)
            try:
                line = orjson.dumps(msg)
            except TypeError:
                continue
            if rnd.random() < 0.2:   # the same message with whitespace, as other encoders write it
                line = line.replace(b",", b", ").replace(b":", b": ")
            lines.append(line)
    ending = rnd.choice([b"\n", b"\r\n"])
    return ending.join(lines) + (ending if rnd.random() < 0.9 else b"")


def _chunks(rnd, data):
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randrange(0, 12)))) if len(data) > 1 else []
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


class Harness:
    """One twin's Dispatcher with a fixed set of handlers and tools; records every byte out."""

    def __init__(self, core, loop, batches):
        self.out = []
        self.events = []
        d = self.dispatcher = core.Dispatcher(loop, self.out.append, LIMIT)
        d.batches = batches
        d.on_protocol_error = lambda kind, size: self.events.append(("protocol", kind, size))
        d.on_exception = lambda req, exc: self.events.append(("exception", type(exc).__name__, str(exc)))
        d.on_client_response = lambda msg: self.events.append(("response", msg))
        d.methods["echo"] = lambda params, req: {"echo": params}
        d.methods["fail"] = self._fail
        d.methods["boom"] = self._boom
        d.methods["later"] = self._later
        d.notifications["note"] = lambda params: self.events.append(("note", params))

        def finish(value, req):
            return {"content": [{"type": "text", "text": repr(value)}]}

        def fail(exc, req):
            return {"content": [{"type": "text", "text": f"{type(exc).__name__}: {exc}"}], "isError": True}

        tools = {"add": (self._add, False), "eager": (self._eager, True), "suspends": (self._suspends, True),
                 "raises": (self._boom, False), "refuses": (self._fail, True)}
        for name, (call, eager) in tools.items():
            d.tools[name] = core.ToolSlot(name, call, finish, fail, eager)

    @staticmethod
    def _add(args, req):
        return sum(v for v in args.values() if type(v) is int)

    @staticmethod
    async def _eager(args, req):
        return sorted(args)

    @staticmethod
    async def _suspends(args, req):
        await asyncio.sleep(0)
        return len(args)

    @staticmethod
    def _fail(params, req):
        from bemcp._core import RpcError
        raise RpcError(-32602, "refused", {"params": params})

    @staticmethod
    def _boom(params, req):
        raise ValueError(f"boom {params!r}")

    @staticmethod
    async def _later(params, req):
        await asyncio.sleep(0)
        return {"later": params}


def _settle(loop):
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))


@pytest.mark.parametrize("seed", range(60))
def test_both_dispatchers_write_the_same_bytes_for_random_streams(seed):
    rnd = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        c, py = Harness(C, loop, seed % 2 == 0), Harness(PY, loop, seed % 2 == 0)
        data = _stream(rnd, rnd.randrange(1, 40))
        for chunk in _chunks(rnd, data):
            c.dispatcher.feed(chunk)
            py.dispatcher.feed(chunk)
            _settle(loop)
        c.dispatcher.feed(b"\n")   # end of input ends a last line without its newline
        py.dispatcher.feed(b"\n")
        _settle(loop)
        assert b"".join(c.out) == b"".join(py.out), data
        assert c.events == py.events
        assert c.dispatcher.received == py.dispatcher.received
        assert c.dispatcher.table.counts == py.dispatcher.table.counts
        assert [r[1:] for r in c.dispatcher.recent] == [r[1:] for r in py.dispatcher.recent]
        for h in (c, py):
            h.dispatcher.close()
        _settle(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("seed", range(10))
def test_both_rings_of_recent_messages_keep_the_same_last_messages(seed):
    rnd = random.Random(2000 + seed)
    rings = [core.modules["_dispatch"]._RecentMessages() for core in (C, PY)]
    for _ in range(rnd.randrange(0, 3 * RECENT)):
        message = rnd.choice(["tools/call", "ping", None, 7]), _ids(rnd), rnd.randrange(1 << 40)
        for ring in rings:
            ring.add(*message)
    snapshots = [ring.snapshot() for ring in rings]
    assert [r[1:] for r in snapshots[0]] == [r[1:] for r in snapshots[1]]
    assert rings[0].count == rings[1].count and len(snapshots[0]) == min(RECENT, rings[0].count)
    for snapshot in snapshots:
        times = [r[0] for r in snapshot]
        assert times == sorted(times)


def _frames(items):
    return [("oversized", i.size, i.head) if type(i).__name__ == "Oversized" else bytes(i) for i in items]


@pytest.mark.parametrize("seed", range(60))
def test_both_framers_cut_random_streams_alike(seed):
    rnd = random.Random(1000 + seed)
    c, py = C.Framer(LIMIT), PY.Framer(LIMIT)
    data = _stream(rnd, rnd.randrange(1, 40))
    for chunk in _chunks(rnd, data):
        assert _frames(c.feed(chunk)) == _frames(py.feed(chunk)), data
        assert c.buffered == py.buffered


# -- input types --------------------------------------------------------------------

LINE = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":1}}\n'


def _outcome(fn, *args, **kwargs):
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return type(exc).__name__


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "str"])
def test_both_dispatchers_take_the_same_input_types(kind):
    data = {"bytes": LINE, "bytearray": bytearray(LINE), "memoryview": memoryview(LINE),
            "str": LINE.decode()}[kind]
    loop = asyncio.new_event_loop()
    try:
        outcomes = []
        for core in (C, PY):
            h = Harness(core, loop, False)
            outcomes.append((_outcome(h.dispatcher.feed, data), b"".join(h.out)))
        assert outcomes[0] == outcomes[1]
        if kind != "str":
            assert outcomes[0][1] == b'{"jsonrpc":"2.0","id":1,"result":{"echo":{"a":1}}}\n'
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "str"])
def test_both_framers_take_the_same_input_types(kind):
    data = {"bytes": LINE, "bytearray": bytearray(LINE), "memoryview": memoryview(LINE),
            "str": LINE.decode()}[kind]
    got = [_outcome(lambda: _frames(core.Framer(LIMIT).feed(data))) for core in (C, PY)]
    assert got[0] == got[1]


@pytest.mark.parametrize("limit", [None, 0, 3, "3", 2.5])
def test_both_tool_slots_take_the_same_limits(limit):
    got = [_outcome(lambda: core.ToolSlot("n", None, None, None, limit=limit).limit) for core in (C, PY)]
    assert got[0] == got[1]


@pytest.mark.parametrize("max_size", [10, None, "10", 2.5])
def test_both_framers_take_the_same_sizes(max_size):
    got = [_outcome(lambda: core.Framer(max_size).max_size) for core in (C, PY)]
    assert got[0] == got[1]


BAD_CALLS = {
    "stop(req, '4')": lambda core, d, req: d.stop(req, "4"),
    "stop(req, 4.0)": lambda core, d, req: d.stop(req, 4.0),
    "stop(req, None)": lambda core, d, req: d.stop(req, None),
    "stop(req, 99)": lambda core, d, req: d.stop(req, 99),
    "stop(req, -1)": lambda core, d, req: d.stop(req, -1),
    "stop(req, RUNNING)": lambda core, d, req: d.stop(req, core.STATE_RUNNING),
    "stop(None, CANCELLED)": lambda core, d, req: d.stop(None, core.STATE_CANCELLED),
    "cancel(id, None)": lambda core, d, req: d.cancel(req.id, None),
    "close(None, OK)": lambda core, d, req: d.table.close(None, core.STATE_OK),
    "arm(None, 1.0)": lambda core, d, req: d.table.arm(None, 1.0),
}


@pytest.mark.parametrize("call", BAD_CALLS)
def test_both_cores_refuse_a_bad_state_or_request_and_leave_the_request_running(call):
    loop = asyncio.new_event_loop()
    try:
        got = []
        for core in (C, PY):
            d = core.Dispatcher(loop, None, 100)
            req = d.table.open(1, "m", None, None)
            got.append((_outcome(BAD_CALLS[call], core, d, req), req.running, len(d.table), d.table.counts))
            d.close()
        assert got[0] == got[1]
        assert got[0][0] in ("TypeError", "ValueError") and got[0][1:3] == (True, 1)
    finally:
        loop.close()


# -- shared facts: _consts.pxd says what _consts.py says ---------------------------------

C_FORMATS = {"double": "d", "long long": "q"}


def test_the_c_constants_agree_with_the_python_ones():
    from bemcp._core import _consts
    with open(_consts.__file__[:-3] + ".pxd") as f:
        pxd = f.read()
    enum = dict(re.findall(r"^    (\w+) = (\d+)", pxd, re.M))
    python = {n: str(getattr(_consts, n)) for n in enum if hasattr(_consts, n)}
    assert {n: v for n, v in enum.items() if n in python} == python
    assert set(enum) - set(python) == {"N_STATES"}
    assert int(enum["N_STATES"]) == len(_consts.STATE_NAMES) == len(_consts.STATUS)
    assert [n for n in enum if n.startswith("STATE_")] == [f"STATE_{s.upper()}" for s in _consts.STATE_NAMES]
    struct = re.search(r"ctypedef struct FinishedRow:\n((?:    .*\n)+)", pxd).group(1)
    fields = re.findall(r"^    ([a-z ]+) (\w+) *(?:#.*)?$", struct, re.M)
    assert tuple(name for _, name in fields) == _consts.FINISHED_FIELDS
    assert "=" + "".join(C_FORMATS[t] for t, _ in fields) == _consts.FINISHED_ROW.format


# -- the compiled modules match their sources ------------------------------------------


def test_the_compiled_core_was_built_from_the_sources_on_disk():
    from bemcp._core._sources import source_hash
    stale = [name for name in C.modules
             if getattr(C.modules[name], "SOURCE_HASH", None) != source_hash(name)]
    assert not stale, f"compiled {stale} older than their sources: rebuild: pip install -e ."
