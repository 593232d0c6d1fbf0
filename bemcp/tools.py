"""Tools as the server sees them: schema, validation, invocation, result mapping."""

import asyncio
import dataclasses
import enum
import functools
import inspect
import logging
import re
import typing
from typing import get_args, get_origin

from orjson import dumps

from .revisions import MODERN_VERSIONS, VERSION_KEY, request_version
from .schema import compile_arguments_validator, is_typeddict, schema_for


def note(req, key, value):
    """Add ``key`` to what tasks.log records of ``req`` (its ``detail``)."""
    detail = req.detail
    if type(detail) is not dict:
        detail = req.detail = {}
    detail[key] = value


class ToolError(Exception):
    """Raise in a tool to answer with ``isError: true`` and this message."""


class ToolInterrupted(BaseException):
    """Raised inside a sync tool's worker thread after its request was stopped.

    A BaseException, so ``except Exception`` in a tool does not swallow it.
    """


class ToolResult:
    """An explicit tool result: content blocks, structured content, error flag."""

    __slots__ = ("content", "structured", "is_error")

    def __init__(self, content=(), structured=None, is_error=False):
        self.content = [c if isinstance(c, dict) else text(str(c)) for c in content]
        self.structured = structured
        self.is_error = is_error


class NeedInput:
    """A handler's outcome when a 2026-07-28 round ended for input (see bemcp.asking)."""

    __slots__ = ("result",)

    def __init__(self, result):
        self.result = result   # the input_required result


class Content(dict):
    """A content block (text, image, audio, embedded resource, resource link); see the helpers below."""


def text(value):
    """A text block."""
    return Content(type="text", text=value)


def image(data, mime_type):
    """An image block; ``data`` is bytes or base64 text."""
    return Content(type="image", data=_b64(data), mimeType=mime_type)


def audio(data, mime_type):
    """An audio block; ``data`` is bytes or base64 text."""
    return Content(type="audio", data=_b64(data), mimeType=mime_type)


def embedded_resource(uri, text=None, *, blob=None, mime_type=None):
    """A resource embedded in a result or a prompt: ``text``, or ``blob`` (bytes or base64)."""
    resource = {"uri": uri}
    if mime_type:
        resource["mimeType"] = mime_type
    if blob is not None:
        resource["blob"] = _b64(blob)
    else:
        resource["text"] = text if text is not None else ""
    return Content(type="resource", resource=resource)


def resource_link(uri, name, mime_type=None, description=None):
    block = Content(type="resource_link", uri=uri, name=name)
    if mime_type:
        block["mimeType"] = mime_type
    if description:
        block["description"] = description
    return block


def _b64(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        import base64
        return base64.b64encode(data).decode("ascii")
    return data


class Context:
    """What a running tool, prompt or resource may ask of the server and the client.

    Declare a parameter annotated ``Context`` to receive one. Progress, logging and
    cancellation are safe to use from a sync tool's worker thread; the asks
    (``sample``, ``elicit``, ``list_roots``) are coroutines for async handlers.
    """

    __slots__ = ("_request", "_server", "_last_progress", "log", "_asker")

    def __init__(self, request, server, log):
        from .client_log import RequestLog
        self._request = request
        self._server = server
        self.log = RequestLog(log, server, request)
        self._last_progress = None
        self._asker = None

    @property
    def request_id(self):
        return self._request.id

    @property
    def tool(self):
        return self._request.tool

    @property
    def cancelled(self):
        """True once the request was cancelled, timed out or killed."""
        return not self._request.running

    def note(self, **fields):
        """Add ``fields`` to what tasks.log records of this call (e.g. a command's exit code);
        never put argument values here."""
        for key, value in fields.items():
            note(self._request, key, value)

    def timed_out(self, limit):
        """Record that this call stopped at a time limit of its own (``limit`` seconds, e.g.
        a command's ``timeout``): ended with an error result, tasks.log then names it
        ``timed_out`` with the limit, not ``error``."""
        note(self._request, "limit_s", limit)

    def check_cancelled(self):
        """Raise CancelledError if the request was stopped (for loops in sync tools)."""
        if not self._request.running:
            raise asyncio.CancelledError()

    @property
    def progress_token(self):
        params = self._request.params
        meta = params.get("_meta") if type(params) is dict else None
        return meta.get("progressToken") if type(meta) is dict else None

    def report_progress(self, progress, total=None, message=None):
        """Send notifications/progress if the client asked for it (a progressToken).

        Progress must increase: a value not above the last one is dropped.
        """
        token = self.progress_token
        if token is None or not self._request.running:
            return False
        if self._last_progress is not None and progress <= self._last_progress:
            return False
        self._last_progress = progress
        params = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self._server.notify("notifications/progress", params, self._request)
        return True

    # -- asking the client -----------------------------------------------------------

    @property
    def client_capabilities(self):
        """The capabilities the client declared (for this request, in 2026-07-28)."""
        from .asking import client_capabilities
        return client_capabilities(self._server, self._request)

    def client_supports(self, capability):
        """Whether the client declared ``capability`` ("sampling", "elicitation", "roots")."""
        return capability in self.client_capabilities

    def _ask(self, method, params, key):
        if self._asker is None:
            from .asking import Asker
            self._asker = Asker(self._server, self._request)
        return self._asker.ask(method, params, key)

    async def sample(self, messages, *, max_tokens=1000, system_prompt=None, temperature=None,
                     stop_sequences=None, model_preferences=None, include_context=None,
                     metadata=None, key=None):
        """Ask the client's model for a message (``sampling/createMessage``).

        ``messages``: a string (one user message), or a list of strings, content
        blocks or ``{"role", "content"}`` dicts. Returns the client's result dict
        (``role``, ``content``, ``model``, ``stopReason``). ``key`` names the ask in a
        2026-07-28 ``inputRequests`` (default ``sampling-N``).
        """
        params = {"messages": _sampling_messages(messages), "maxTokens": max_tokens}
        for name, value in (("systemPrompt", system_prompt), ("temperature", temperature),
                            ("stopSequences", stop_sequences), ("modelPreferences", model_preferences),
                            ("includeContext", include_context), ("metadata", metadata)):
            if value is not None:
                params[name] = value
        return await self._ask("sampling/createMessage", params, key)

    async def elicit(self, message, schema, *, key=None):
        """Ask the user for input (``elicitation/create``, form mode).

        ``schema``: a JSON Schema object of flat properties (defaults, titled and
        untitled enums, multi-select arrays), or a TypedDict or dataclass to derive
        one from. Returns the client's result dict: ``action`` ("accept", "decline"
        or "cancel") and, when accepted, ``content``.
        """
        if not isinstance(schema, dict):
            from .schema import schema_for
            schema = schema_for(schema)
        _check_elicitation_schema(schema)
        return await self._ask("elicitation/create", {"mode": "form", "message": message,
                                                      "requestedSchema": schema}, key)

    async def list_roots(self, *, key=None):
        """The client's roots (``roots/list``): a list of ``{"uri", "name"?}`` dicts."""
        result = await self._ask("roots/list", {}, key)
        return result.get("roots", []) if type(result) is dict else []


_ELICIT_TYPES = ("string", "number", "integer", "boolean", "array")


def _check_elicitation_schema(schema):
    """Elicitation forms are flat: an object of primitive (or multi-select array) properties."""
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict):
        raise ValueError("an elicitation schema is {'type': 'object', 'properties': {...}}")
    for name, prop in props.items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        if kind not in _ELICIT_TYPES:
            raise ValueError(f"elicitation property {name!r}: type must be one of "
                             f"{', '.join(_ELICIT_TYPES)} (forms are flat), not {kind!r}")
        if kind == "array" and not isinstance(prop.get("items"), dict):
            raise ValueError(f"elicitation property {name!r}: a multi-select array needs 'items' "
                             "with 'enum' or 'anyOf' choices")


def _sampling_messages(messages):
    if isinstance(messages, str):
        messages = [messages]
    out = []
    for m in messages:
        if isinstance(m, str):
            m = {"role": "user", "content": text(m)}
        elif isinstance(m, dict) and "role" not in m:
            m = {"role": "user", "content": m}   # a bare content block
        out.append(m)
    return out


class Tool:
    """A registered tool. The dispatcher calls ``start``, then ``finish`` or ``fail``."""

    def __init__(self, fn, server, *, name=None, title=None, description=None,
                 input_schema=None, output_schema=None, annotations=None,
                 timeout=None, eager=False, max_concurrency=0, task_support=None):
        self.fn = fn
        self.server = server
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", self.name):
            raise ValueError(f"tool name {self.name!r}: use 1-128 letters, digits, '_', '-' or '.'")
        self.title = title
        self.is_async = inspect.iscoroutinefunction(fn)
        self.timeout = timeout
        self.eager = bool(eager and self.is_async)
        self.max_concurrency = max_concurrency
        self.task_support = task_support
        self.annotations = annotations
        self.log = logging.getLogger(f"bemcp.tool.{self.name}")
        summary, arg_docs = parse_docstring(fn.__doc__)
        self.description = description if description is not None else summary
        self.context_param = None
        self._converters = {}
        derived, self.output_schema, self._wrap_output = self._derive(fn, arg_docs)
        self.input_schema = input_schema if input_schema is not None else derived
        if output_schema is not None:
            self.output_schema = output_schema
            self._wrap_output = False
        # Compiled on the first call (generating a validator's code is most of what
        # registering a tool costs, and a server starts with tools it may never run).
        self._validate = self._first_validate
        # Fast path: an async tool whose arguments pass straight through.
        self._direct = self.is_async and not self._converters and self.context_param is None

    def _first_validate(self, args):
        self._validate = compile_arguments_validator(self.input_schema)
        return self._validate(args)

    def _derive(self, fn, arg_docs):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        props = {}
        required = []
        for pname, param in sig.parameters.items():
            hint = hints.get(pname, param.annotation)
            if hint is Context or (isinstance(hint, type) and issubclass(hint, Context)):
                self.context_param = pname
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            schema = {} if hint is inspect.Parameter.empty else dict(schema_for(hint))
            if pname in arg_docs and "description" not in schema:
                schema["description"] = arg_docs[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            elif param.default is not None:
                default = param.default.value if isinstance(param.default, enum.Enum) else param.default
                if isinstance(default, (str, int, float, bool, list, dict)):
                    schema.setdefault("default", default)
            props[pname] = schema
            converter = _converter_for(hint)
            if converter is not None:
                self._converters[pname] = converter
        input_schema = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            input_schema["required"] = required
        ret = hints.get("return", inspect.Parameter.empty)
        output_schema, wrap = None, False
        if ret is not inspect.Parameter.empty and _is_structured(ret):
            output_schema = schema_for(ret)
            if output_schema.get("type") != "object":
                output_schema = {"type": "object", "properties": {"result": output_schema},
                                 "required": ["result"]}
                wrap = True
        return input_schema, output_schema, wrap

    @functools.cached_property
    def header_arguments(self):
        """(header name lowered, argument, JSON type) of each argument its schema marks with
        x-mcp-header: 2026-07-28 clients mirror those into Mcp-Param-* headers."""
        found = []
        for arg, prop in (self.input_schema.get("properties") or {}).items():
            if type(prop) is dict and type(prop.get("x-mcp-header")) is str:
                found.append((prop["x-mcp-header"].lower().encode("latin-1"), arg, prop.get("type")))
        return found

    def definition(self):
        """This tool's entry in tools/list."""
        entry = {"name": self.name}
        if self.title:
            entry["title"] = self.title
        if self.description:
            entry["description"] = self.description
        entry["inputSchema"] = self.input_schema
        if self.output_schema is not None:
            entry["outputSchema"] = self.output_schema
        if self.annotations:
            entry["annotations"] = self.annotations
        if self.task_support:
            entry["execution"] = {"taskSupport": self.task_support}
        return entry

    # -- the call path ---------------------------------------------------------

    # -- the call path: the dispatcher calls, then finishes or fails ------------

    def start(self, args, req):
        """Validate and start a call: the tool's value, or an awaitable of it."""
        params = req.params   # the tools/call's: a dict
        if "_meta" in params:
            meta = params["_meta"]
            version = meta.get(VERSION_KEY) if type(meta) is dict else None
            if version is not None and version not in MODERN_VERSIONS:
                request_version(params)  # -32022 for a version we do not speak
        error = self._validate(args)
        if error is not None:
            raise ToolError(f"Invalid arguments for tool {self.name!r}: {error}")
        if self._direct:
            return self.fn(**args)
        if self._converters or self.context_param is not None:
            args = self._prepare(args, req)
        if self.is_async:
            if self.context_param is not None and _is_modern(req):
                # It may ask the client: an unanswered ask ends the round with input_required.
                from .asking import complete_or_ask
                return complete_or_ask(self.fn(**args))
            return self.fn(**args)
        return self.server.run_in_thread(req, self.fn, args)

    def _prepare(self, args, req):
        args = dict(args)
        for pname, convert in self._converters.items():
            if pname in args:
                args[pname] = convert(args[pname])
        if self.context_param is not None:
            args[self.context_param] = Context(req, self.server, self.log)
        return args

    def finish(self, value, req):
        """The CallToolResult for a value the tool returned."""
        if type(value) is str:   # fast path: plain text
            result = {"content": [{"type": "text", "text": value}]}
            params = req.params
            if "_meta" in params:
                meta = params["_meta"]
                if type(meta) is dict and VERSION_KEY in meta:   # _is_modern, inline
                    result["resultType"] = "complete"
            return result
        return self.to_result(value, _is_modern(req))

    def fail(self, exc, req):
        """The CallToolResult for an exception the tool raised."""
        if isinstance(exc, ToolError):
            killed_by = getattr(exc, "killed_by", None)
            if killed_by is not None:   # tasks.log: killed, not error
                note(req, "killed_by", killed_by)
            return self.error_result(str(exc), req)
        self.server.tool_crashed(self, req, exc)
        return self.error_result(f"Tool {self.name!r} failed: {type(exc).__name__}: {exc}", req)

    def error_result(self, message, req):
        """An isError result carrying ``message``, shaped for the request's protocol era."""
        return self._error(message, _is_modern(req))

    @staticmethod
    def _error(message, modern):
        result = {"content": [{"type": "text", "text": message}], "isError": True}
        if modern:
            result["resultType"] = "complete"
        return result

    def to_result(self, value, modern):
        """Map a tool's return value onto a CallToolResult."""
        if type(value) is NeedInput:
            return value.result   # 2026-07-28: the client is asked, the call is not over
        if type(value) is str:
            result = {"content": [{"type": "text", "text": value}]}
        elif isinstance(value, ToolResult):
            result = {"content": value.content}
            if value.structured is not None:
                result["structuredContent"] = _plain(value.structured)
            if value.is_error:
                result["isError"] = True
        elif isinstance(value, Content):
            result = {"content": [value]}
        elif value is None:
            result = {"content": []}
        elif type(value) in (int, float, bool) and self.output_schema is None:
            result = {"content": [{"type": "text", "text": dumps(value).decode()}]}
        elif isinstance(value, list) and value and all(isinstance(v, Content) for v in value):
            result = {"content": value}
        else:
            plain = _plain(value)
            if self._wrap_output or type(plain) is not dict:
                plain = {"result": plain}
            result = {"content": [{"type": "text", "text": dumps(plain).decode()}],
                      "structuredContent": plain}
        if modern:
            result["resultType"] = "complete"
        return result


def _is_modern(req):
    """Whether ``req`` came from a 2026-07-28 client (its version sits in ``_meta``)."""
    params = req.params
    if type(params) is not dict:
        return False
    meta = params.get("_meta")
    return type(meta) is dict and VERSION_KEY in meta


def _plain(value):
    """Dataclasses and enums to JSON-ready values (orjson does the rest)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return value


def _is_structured(tp):
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _is_structured(get_args(tp)[0])
    return (tp in (dict, list) or origin in (dict, list) or is_typeddict(tp)
            or dataclasses.is_dataclass(tp))


def _converter_for(hint):
    """A function turning a validated JSON value into the annotated Python type, or None."""
    origin = get_origin(hint)
    if origin is typing.Annotated:
        return _converter_for(get_args(hint)[0])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if hint is float:   # JSON has one number type: 3 arrives as int, the tool asked for float
        return float
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        inner = {k: _converter_for(v) for k, v in hints.items()}
        inner = {k: c for k, c in inner.items() if c is not None}

        def to_dataclass(value):
            value = {k: (inner[k](v) if k in inner else v) for k, v in value.items()}
            return hint(**value)
        return to_dataclass
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1:
            inner = _converter_for(members[0])
            if inner is not None:
                return lambda v: None if v is None else inner(v)
        return None
    if origin in (list, tuple, set, frozenset) or hint in (tuple, set, frozenset):
        args = get_args(hint)
        inner = _converter_for(args[0]) if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        container = origin or hint
        if inner is None and container is list:
            return None
        if inner is None:
            return container
        return lambda v: container(inner(x) for x in v)
    return None


_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc):
    """(summary, {param: description}) from a docstring with an optional Args: section.

    Understands Google style ("Args:" then "name: text") and reST (":param name: text").
    """
    if not doc:
        return None, {}
    doc = inspect.cleandoc(doc)
    params = {}
    for m in re.finditer(r"^:param\s+(?:\S+\s+)?(\w+):\s*(.+)$", doc, re.M):
        params[m.group(1)] = m.group(2).strip()
    lines = doc.splitlines()
    summary_lines = []
    section = None
    current = None
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Params):", stripped):
            section = "args"
            continue
        if re.fullmatch(r"(Returns|Return|Raises|Yields|Examples?|Notes?):", stripped):
            section = "other"
            continue
        if section is None:
            if stripped.startswith(":"):
                section = "other"
                continue
            summary_lines.append(line)
        elif section == "args":
            m = _ARG_LINE.match(line)
            if m and (len(line) - len(line.lstrip())) <= 4:
                current = m.group(1).lstrip("*")
                params[current] = m.group(2).strip()
            elif stripped and current:
                params[current] = (params[current] + " " + stripped).strip()
    summary = "\n".join(summary_lines).strip() or None
    return summary, params

