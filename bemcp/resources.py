"""Resources as the server sees them: fixed URIs, URI templates (RFC 6570), and their contents."""

import base64
import inspect
import logging
import re
from urllib.parse import quote, unquote

from orjson import dumps

from .prompts import context_param
from .tools import parse_docstring

# RFC 6570 expressions understood: {var} (simple), {+var} (reserved), {#var} (fragment),
# {/var} (path segment), {.var} (label), {?a,b} and {&a,b} (query). Lists and prefixes are not.
_EXPRESSION = re.compile(r"\{([+#/.?&]?)([A-Za-z0-9_,]+)\}")
_PATTERNS = {"": r"[^/?#&,]*", "+": r"[^?#]*", "#": r".*", "/": r"[^/?#]*", ".": r"[^/?#.]*"}
_CONVERT = {int: int, float: float, bool: lambda v: v.lower() in ("1", "true", "yes", "on")}


def _default_mime(fn, explicit):
    if explicit:
        return explicit
    ret = inspect.signature(fn).return_annotation
    return {str: "text/plain", bytes: "application/octet-stream"}.get(ret, "application/json"
                                                                      if ret is not inspect.Parameter.empty
                                                                      else None)


class Resource:
    """A resource at a fixed URI, or (``template``) every URI a template matches."""

    def __init__(self, uri, fn, *, name=None, title=None, description=None, mime_type=None,
                 annotations=None, completions=None):
        self.uri = uri
        self.fn = fn
        self.name = name or fn.__name__
        self.title = title
        summary, _ = parse_docstring(fn.__doc__)
        self.description = description if description is not None else summary
        self.mime_type = _default_mime(fn, mime_type)
        self.annotations = annotations
        self.context_param = context_param(fn)
        self.log = logging.getLogger(f"bemcp.resource.{self.name}")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.variables = [m.group(2).split(",") for m in _EXPRESSION.finditer(uri)]
        self.variables = [v for group in self.variables for v in group]
        self.template = bool(self.variables)
        self._regex = _compile(uri) if self.template else None
        self.completions = dict(completions or {})
        unknown = set(self.completions) - set(self.variables)
        if unknown:
            raise ValueError(f"resource {uri}: completions for unknown template variables {sorted(unknown)}")
        sig = inspect.signature(fn)
        self._converters = {p: _CONVERT[sig.parameters[p].annotation] for p in self.variables
                            if p in sig.parameters and sig.parameters[p].annotation in _CONVERT}

    def definition(self):
        entry = {("uriTemplate" if self.template else "uri"): self.uri, "name": self.name}
        if self.title:
            entry["title"] = self.title
        if self.description:
            entry["description"] = self.description
        if self.mime_type:
            entry["mimeType"] = self.mime_type
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry

    def match(self, uri):
        """The template variables ``uri`` gives (a dict), or None if it does not match."""
        m = self._regex.fullmatch(uri)
        if m is None:
            return None
        values = {}
        for name, value in m.groupdict().items():
            if name.startswith("_q"):
                values.update(_query(value, self.variables))
            elif value is not None:
                values[name] = unquote(value)
        try:
            for name, convert in self._converters.items():
                if name in values:
                    values[name] = convert(values[name])
        except ValueError:
            return None
        return values

    def contents(self, uri, value):
        """The ``contents`` of resources/read for what the function returned."""
        if isinstance(value, list) and value and all(isinstance(c, dict) and "uri" in c for c in value):
            return value   # explicit contents
        item = {"uri": uri}
        mime = self.mime_type
        if isinstance(value, (bytes, bytearray, memoryview)):
            item["mimeType"] = mime or "application/octet-stream"
            item["blob"] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, str):
            item["mimeType"] = mime or "text/plain"
            item["text"] = value
        else:
            item["mimeType"] = mime or "application/json"
            item["text"] = dumps(value).decode()
        return [item]

    def expand(self, values):
        """The URI for ``values`` (simple expansion; used by tests and completions)."""
        def one(m):
            op, names = m.group(1), m.group(2).split(",")
            safe = "/:@!$&'()*+,;=" if op and op in "+#" else ""
            parts = [quote(str(values[n]), safe=safe) for n in names if n in values]
            if op and op in "?&":
                return (op if parts else "") + "&".join(f"{n}={quote(str(values[n]), safe='')}"
                                                        for n in names if n in values)
            return ({"/": "/", ".": ".", "#": "#"}.get(op, "") if parts else "") + ",".join(parts)
        return _EXPRESSION.sub(one, self.uri)


def _compile(template):
    pattern = []
    pos = 0
    q = 0
    for m in _EXPRESSION.finditer(template):
        pattern.append(re.escape(template[pos:m.start()]))
        op, names = m.group(1), m.group(2).split(",")
        if op and op in "?&":
            q += 1
            pattern.append(rf"(?:\{op}(?P<_q{q}>[^#]*))?")
        else:
            prefix = re.escape(op) if op and op in "/.#" else ""
            group = ",".join(rf"(?P<{n}>{_PATTERNS[op]})" for n in names)
            pattern.append(prefix + group)
        pos = m.end()
    pattern.append(re.escape(template[pos:]))
    return re.compile("".join(pattern))


def _query(text, names):
    values = {}
    for pair in (text or "").split("&"):
        key, _, value = pair.partition("=")
        if key in names:
            values[key] = unquote(value)
    return values
