"""Recovering a request id from the head of a message that could not be parsed whole."""

import re

import orjson

_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,256}"|-?\d{1,19}(?:\.\d{1,17})?(?:[eE][-+]?\d{1,3})?)(?=\s*[,}])')


def recover_id(head):
    """The top-level ``"id"`` of a JSON object that could not be parsed whole, or None.

    Cold path (oversized messages, lines the parser refused): walks the head tracking
    string and nesting state so that an ``"id"`` inside params is never mistaken for
    the request's.
    """
    depth = 0
    in_str = False
    esc = False
    i = 0
    n = len(head)
    while i < n:
        c = head[i]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            if depth == 1:
                m = _ID.match(head, i)
                if m:
                    try:
                        return orjson.loads(m.group(1))
                    except orjson.JSONDecodeError:   # e.g. 1e999, a bad escape: no usable id
                        return None
            in_str = True
        elif c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
        i += 1
    return None
