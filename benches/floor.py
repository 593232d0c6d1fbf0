"""The floor: the least a stdio JSON-RPC server can do, in Python.

Answers every line on stdin with the same canned response line: no parsing, no
validation, no bookkeeping, no event loop. What it does do is what any real
server must: it writes the answers to whatever input is available as soon as
that input is handled (one write per read), so a client waiting on one request
gets its answer at once and a pipelining client gets them batched.

Nothing a server does can cost less than this floor over the same pipes, so
the benchmark quotes every other server as a ratio to it.
"""

import os

# The shape of an echo tools/call result (text "hi"). The id is canned too: the
# floor does not look inside the line, so the driver does not check its ids.
RESPONSE = b'{"jsonrpc":"2.0","id":0,"result":{"content":[{"type":"text","text":"hi"}]}}\n'


def main():
    # Read into one preallocated buffer: os.read(fd, big) would allocate (and
    # page-fault) a fresh buffer of that size on every call.
    buf = bytearray(1 << 16)
    readv, write = os.readv, os.write
    target = [buf]
    while True:
        n = readv(0, target)
        if not n:
            return 0
        # One answer per complete line; a line split across reads is answered
        # by the read that brings its newline.
        lines = buf.count(b"\n", 0, n)
        if lines:
            out = memoryview(RESPONSE * lines)
            while out:
                out = out[write(1, out):]


if __name__ == "__main__":
    raise SystemExit(main())
