"""Server: the registries and MCP semantics (both protocol eras) above the core.

The Server declares its subsystems (``Server.__init__``) and is the one place that wires
them to the core's dispatcher (``build_dispatcher``); the API is in docs/api.md.
"""

import asyncio
import inspect
import logging
import os
import sys
import threading

from orjson import Fragment, dumps

from . import __version__
from ._core import USE_EXTENSIONS, Dispatcher, RpcError, ToolSlot
from ._os import interrupt_thread
from .errors import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
                     RESOURCE_NOT_FOUND)
from .client_log import LOG_LEVELS, SENT
from .config import Config
from .connection import Connection, Peer
from .revisions import (BATCH_VERSIONS, HANDSHAKE_VERSIONS, LATEST_HANDSHAKE,
                        SERVER_INFO_KEY, TASKS_EXTENSION, SUPPORTED_VERSIONS, request_version)
from .subscriptions import Subscriptions
from .tasks import TaskManager
from .tools import Context, Tool, ToolError, ToolInterrupted

log = logging.getLogger("bemcp")

# Methods the 2026-07-28 revision removed; a modern request for one is unknown.
_REMOVED_IN_MODERN = frozenset(("ping", "logging/setLevel", "initialize",
                                "resources/subscribe", "resources/unsubscribe"))


class Server:
    """An MCP server: register tools and resources, then ``run()`` it over stdio.

    >>> server = Server("demo", version="1.0")
    >>> @server.tool
    ... async def add(a: int, b: int) -> int:
    ...     "Add two integers."
    ...     return a + b
    """

    def __init__(self, name, version="0.0.0", *, title=None, instructions=None, config=None,
                 page_size=500, worker_threads=64, list_ttl_ms=60_000):
        self.name = name
        self.version = version
        self.title = title
        self.instructions = instructions
        self.config = config if config is not None else Config()
        self.page_size = page_size
        self.worker_threads = worker_threads
        self.list_ttl_ms = list_ttl_ms
        self.tools = {}
        self.prompts = {}
        self.resources = {}            # fixed URI -> Resource
        self.templates = {}            # URI template -> Resource
        self.waiting_on_client = {}    # request -> (method, id) of the client request it awaits
        self._request_state = None
        self.pipe = None               # the stdio connection (the default one)
        self.route = None              # (request) -> its Connection, set by a transport with many
        self.broadcast = None          # (method, params): a notification for every client
        self.peers_of_transport = None # () -> [(Peer, notify)] for a transport with many clients
        self.dispatcher = None
        self.loop = None
        self._loop_thread = None
        self._executor = None
        self._thread_owner = {}        # worker thread id -> the request it runs
        self._thread_guard = threading.Lock()
        self._list_cache = {}
        self._start_callbacks = []
        self._serving = False          # started() ran: a later on_start callback runs at once
        # Set while every tool is registered; cleared while plugins load in the background.
        self.tools_ready = asyncio.Event()
        self.tools_ready.set()
        self._background = set()       # tasks kept until done (late start callbacks, calls awaiting plugins)
        self._shutdown_callbacks = []
        self._log_handler = None
        self.recorders = []            # f(kind, fields) for every forensics event (record())
        # The subsystems. Each starts and stops with the server (on_start/on_shutdown, from
        # where it is enabled); build_dispatcher wires each to the core, here and nowhere else.
        self.subscriptions = Subscriptions(self)   # resources/subscribe, subscriptions/listen
        self.tasks = TaskManager(self)             # MCP tasks: tasks/get, tasks/result, ...
        self.watchdog = None    # Watchdog, with config.watchdog: escalation, lock-ups, memory
        self.logs = None        # Logs, from bemcp.logs.setup_logging: log files, crash reports
        self.processes = None   # ProcessRegistry of the programs tools start (run_command, process_*)
        self.sandbox = None     # the Sandbox those programs run in, with --sandbox (builtins/commands.py)
        self.plugins = None     # PluginManager, from bemcp.plugins.load_plugins
        if self.config.state_key_file:
            self.use_state_key_file(self.config.state_key_file)   # a bad key file fails here, at start
        if self.config.watchdog:
            from .watchdog import Watchdog
            self.watchdog = Watchdog(self)

    # -- registration ----------------------------------------------------------

    def tool(self, fn=None, **options):
        """Register a tool: ``@server.tool`` or ``@server.tool(name=..., timeout=...)``.

        Options: name, title, description, input_schema, output_schema, annotations,
        timeout (seconds), max_concurrency, task_support ("optional"/"required"),
        eager (an async tool that usually finishes without waiting: run inline).
        """
        def register(fn):
            self.add_tool(Tool(fn, self, **options))
            return fn
        return register(fn) if fn is not None else register

    def add_tool(self, tool):
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        self._tools_changed()

    def remove_tool(self, name):
        del self.tools[name]
        self._tools_changed()

    def _tools_changed(self):
        self._list_cache.clear()
        if self.dispatcher is not None:
            self._sync_tools()
            # Only a client holding an older list (or listening) is told, once for a
            # burst of changes (a plugin registers many tools at once).
            self.subscriptions.list_changed("tools")

    def _sync_tools(self):
        table = self.dispatcher.tools
        table.clear()
        for tool in self.tools.values():
            timeout = self.config.tool_timeouts.get(tool.name, tool.timeout)
            limit = self.config.tool_limits.get(tool.name, tool.max_concurrency)
            slot = ToolSlot(tool.name, tool.start, tool.finish, tool.fail, tool.eager, timeout, limit)
            slot.route = self.tasks.route_for(tool)
            table[tool.name] = slot

    def prompt(self, fn=None, **options):
        """Register a prompt: ``@server.prompt`` or ``@server.prompt(name=..., completions=...)``.

        Its arguments are the function's parameters (strings; required unless they have
        a default); its description is the docstring. It returns a string (one user
        message), a content block, a ``{"role", "content"}`` message (see
        ``bemcp.user``/``bemcp.assistant``), a list of them, or ``{"messages": [...]}``.
        Options: name, title, description, completions ({argument: function}).
        """
        from .prompts import Prompt

        def register(fn):
            self.add_prompt(Prompt(fn, **options))
            return fn
        return register(fn) if fn is not None else register

    def add_prompt(self, prompt):
        if prompt.name in self.prompts:
            raise ValueError(f"a prompt named {prompt.name!r} is already registered")
        self.prompts[prompt.name] = prompt
        self.subscriptions.list_changed("prompts")

    def remove_prompt(self, name):
        del self.prompts[name]
        self.subscriptions.list_changed("prompts")

    def resource(self, uri, **options):
        """Register a resource: ``@server.resource("scheme://fixed")`` or a URI template
        (``@server.resource("users://{user_id}/profile")``, RFC 6570) whose variables
        become the function's arguments.

        The function returns text (``str``), binary (``bytes``, sent as base64) or any
        JSON value. Options: name, title, description, mime_type, annotations,
        completions ({template variable: function}).
        """
        from .resources import Resource

        def register(fn):
            res = Resource(uri, fn, **options)
            table = self.templates if res.template else self.resources
            if uri in table:
                raise ValueError(f"a resource {uri!r} is already registered")
            table[uri] = res
            self.subscriptions.list_changed("resources")
            return fn
        return register

    def remove_resource(self, uri):
        (self.templates if uri in self.templates else self.resources).pop(uri)
        self.subscriptions.list_changed("resources")

    def notify_resource_updated(self, uri):
        """Tell the clients subscribed to ``uri`` that it changed; safe from any thread."""
        if self.dispatcher is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.subscriptions.resource_updated(uri)
        else:
            self.loop.call_soon_threadsafe(self.subscriptions.resource_updated, uri)

    def on_start(self, callback):
        """Call ``callback()`` (sync or async) once the transport is serving (at once if
        it already is: a plugin loading in the background registers its own late)."""
        self._start_callbacks.append(callback)
        if self._serving:
            self.loop.call_soon_threadsafe(self._start_late, callback)
        return callback

    def _start_late(self, callback):
        where = f"start callback {callback!r}"
        try:
            result = callback()
        except Exception as exc:
            self.report_crash(exc, where=where)
            return
        if asyncio.iscoroutine(result):
            task = self.loop.create_task(result)
            self._background.add(task)

            def done(task):
                self._background.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    self.report_crash(task.exception(), where=where)
            task.add_done_callback(done)

    def on_shutdown(self, callback):
        """Call ``callback()`` (sync or async) when the server stops."""
        self._shutdown_callbacks.append(callback)
        return callback

    # -- wiring ----------------------------------------------------------------

    def build_dispatcher(self, loop):
        """Create the dispatcher and register every method with it (once)."""
        self.loop = loop
        self._loop_thread = threading.get_ident()
        cfg = self.config
        d = Dispatcher(loop, None, cfg.max_message_size)
        d.default_timeout = cfg.timeout or None
        d.max_active = cfg.max_inflight
        d.max_queued = cfg.max_queued
        d.timeout_result = self._timeout_result
        d.on_exception = self._on_exception
        d.on_protocol_error = self._on_protocol_error
        d.on_unknown_tool = self._unknown_tool
        if self.watchdog is not None:
            d.on_cancelled = self.watchdog.escalate_later   # stopped work that does not end
        if self.logs is not None:
            d.keep_finished(self.logs.enabled)   # tasks.log: from the first request on
        d.methods.update({
            "initialize": self._handle_initialize,
            "ping": self._modern_gone(self._handle_ping),
            "logging/setLevel": self._modern_gone(self._handle_set_level),
            "server/discover": self._handle_discover,
            "tools/list": self._handle_tools_list,
            "resources/list": self._after_plugins(self._handle_resources_list),
            "resources/templates/list": self._after_plugins(self._handle_templates_list),
            "resources/read": self._after_plugins(self._handle_resources_read),
            "resources/subscribe": self._modern_gone(self.subscriptions.subscribe),
            "resources/unsubscribe": self._modern_gone(self.subscriptions.unsubscribe),
            "subscriptions/listen": self.subscriptions.listen,
            "prompts/list": self._after_plugins(self._handle_prompts_list),
            "prompts/get": self._after_plugins(self._handle_prompts_get),
            "completion/complete": self._after_plugins(self._handle_complete),
            **self.tasks.handlers(),
        })
        d.notifications.update({
            "notifications/initialized": self._handle_initialized,
            "notifications/cancelled": self._handle_cancelled,
        })
        self.dispatcher = d
        self.pipe = Connection(Peer(), d.notify, d.send_request)
        self.tasks.attach(d)
        self._sync_tools()
        return d

    def refuse_tool_calls(self, reason):
        """Answer every new tool call with a busy error saying ``reason``, until called with
        None (the watchdog does so under memory pressure); calls already running go on."""
        self.dispatcher.refusing = reason

    def keep_finished_calls(self, on):
        """Keep (or stop keeping) a record of each tool call as it ends, for the logs to
        take (``dispatcher.take_finished``); the logs stop it once they have taken the last."""
        self.dispatcher.keep_finished(on)

    def _after_plugins(self, handler):
        """``handler``, answering only once the plugins loading in the background have
        registered what they offer: a list or a lookup never misses a plugin's prompt or
        resource (tools/list and tools/call wait the same way)."""
        async def when_ready(params, req):
            await self.tools_ready.wait()
            result = handler(params, req)
            return await result if inspect.isawaitable(result) else result

        def gated(params, req):
            if self.tools_ready.is_set():
                return handler(params, req)
            return when_ready(params, req)
        return gated

    # -- handshake era ------------------------------------------------------------

    def _handle_initialize(self, params, req):
        if type(params) is not dict:
            raise RpcError(INVALID_PARAMS, "initialize needs params {protocolVersion, capabilities, clientInfo}")
        if self.dispatcher.in_batch:
            raise RpcError(INVALID_REQUEST, "Invalid request: initialize cannot be part of a batch")
        requested = params.get("protocolVersion")
        if type(requested) is not str:
            raise RpcError(INVALID_PARAMS, "initialize: protocolVersion must be a string")
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        conn = self.connection(req)
        peer = conn.peer
        peer.protocol_version = version
        if conn is self.pipe:
            self.dispatcher.batches = version in BATCH_VERSIONS
        peer.client_info = params.get("clientInfo")
        peer.client_capabilities = params.get("capabilities")
        result = {"protocolVersion": version, "capabilities": self.capabilities(modern=False),
                  "serverInfo": self.server_info()}
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    def _handle_initialized(self, params):
        self.pipe.peer.initialized = True

    def _handle_ping(self, params, req):
        return {}

    def _handle_set_level(self, params, req):
        level = params.get("level") if type(params) is dict else None
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"level must be one of {', '.join(LOG_LEVELS)}")
        conn = self.connection(req)
        conn.peer.log_level = level
        if conn is self.pipe:
            # The server's own log records follow, over stdio only: over HTTP a record
            # may belong to another client's request.
            self._install_log_forwarding(level)
        return {}

    def _modern_gone(self, handler):
        def handle(params, req):
            if request_version(params) is not None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {req.method} (removed in 2026-07-28)")
            return handler(params, req)
        return handle

    # -- 2026-07-28 ----------------------------------------------------------------

    def _handle_discover(self, params, req):
        request_version(params)
        result = {"resultType": "complete", "supportedVersions": list(SUPPORTED_VERSIONS),
                  "capabilities": self.capabilities(modern=True),
                  "ttlMs": self.list_ttl_ms, "cacheScope": "public",
                  "_meta": {SERVER_INFO_KEY: self.server_info()}}
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    # -- both eras ---------------------------------------------------------------------

    def server_info(self):
        info = {"name": self.name, "version": self.version}
        if self.title:
            info["title"] = self.title
        return info

    def capabilities(self, modern):
        # listChanged: through subscriptions/listen in 2026-07-28, to a client holding a list before.
        caps = {"tools": {"listChanged": True}, "logging": {}}
        if self.prompts or not self.tools_ready.is_set():   # plugins loading may add prompts
            caps["prompts"] = {"listChanged": True}
        if self.resources or self.templates or not self.tools_ready.is_set():
            caps["resources"] = {"subscribe": True, "listChanged": True}
        if any(p.completions for p in self.prompts.values()) or \
                any(r.completions for r in self.templates.values()):
            caps["completions"] = {}
        tasks = any(t.task_support in ("optional", "required") for t in self.tools.values())
        if modern:
            if tasks:
                caps["extensions"] = {TASKS_EXTENSION: {}}
        else:
            if tasks:
                caps["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        return caps

    def _handle_tools_list(self, params, req):
        if not self.tools_ready.is_set():
            return self._tools_list_when_ready(params, req)
        modern = request_version(params) is not None
        cursor = params.get("cursor") if type(params) is dict else None
        if not modern:
            self.connection(req).peer.listed.add("tools")
        key = (modern, cursor)
        cached = self._list_cache.get(key)
        if cached is None:
            cached = Fragment(dumps(self._tools_page(modern, cursor)))
            if len(self._list_cache) < 1024:
                self._list_cache[key] = cached
        return cached

    def _unknown_tool(self, id, params):
        if self.tools_ready.is_set():
            return False
        # The tool may belong to a plugin still loading: look again once loading ends.
        task = self.loop.create_task(self._call_when_ready(id, params, self.dispatcher.hold()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _call_when_ready(self, id, params, batch):
        await self.tools_ready.wait()
        self.dispatcher.call_tool(id, params, batch)

    async def _tools_list_when_ready(self, params, req):
        # Plugins are still loading (bounded by their time budget): never list without them.
        await self.tools_ready.wait()
        return self._handle_tools_list(params, req)

    def _tools_page(self, modern, cursor):
        tools = sorted(self.tools.values(), key=lambda t: t.name)
        start = self._decode_cursor(cursor, len(tools))
        page = tools[start:start + self.page_size]
        result = {"tools": [t.definition() for t in page]}
        if start + self.page_size < len(tools):
            result["nextCursor"] = f"offset:{start + self.page_size}"
        return self._list_result(result, modern)

    def _list_result(self, result, modern):
        if modern:
            result["resultType"] = "complete"
            result["ttlMs"] = self.list_ttl_ms
            result["cacheScope"] = "public"
        return result

    @staticmethod
    def _decode_cursor(cursor, total):
        if cursor is None:
            return 0
        if type(cursor) is str and cursor.startswith("offset:") and cursor[7:].isdigit():
            start = int(cursor[7:])
            if start <= total:
                return start
        raise RpcError(INVALID_PARAMS, f"Invalid cursor: {cursor!r}")

    def _page(self, req, params, key, items, modern, kind):
        """One page of a list result (deterministic order), with 2026-07-28 cache hints."""
        cursor = params.get("cursor") if type(params) is dict else None
        start = self._decode_cursor(cursor, len(items))
        result = {key: items[start:start + self.page_size]}
        if start + self.page_size < len(items):
            result["nextCursor"] = f"offset:{start + self.page_size}"
        if not modern:
            self.connection(req).peer.listed.add(kind)
        return self._list_result(result, modern)

    def _handle_prompts_list(self, params, req):
        modern = request_version(params) is not None
        items = [p.definition() for _, p in sorted(self.prompts.items())]
        return self._page(req, params, "prompts", items, modern, "prompts")

    def _handle_resources_list(self, params, req):
        modern = request_version(params) is not None
        items = [r.definition() for _, r in sorted(self.resources.items())]
        return self._page(req, params, "resources", items, modern, "resources")

    def _handle_templates_list(self, params, req):
        modern = request_version(params) is not None
        items = [r.definition() for _, r in sorted(self.templates.items())]
        return self._page(req, params, "resourceTemplates", items, modern, "resources")

    def _handle_prompts_get(self, params, req):
        modern = request_version(params) is not None
        name = params.get("name") if type(params) is dict else None
        if type(name) is not str:
            raise RpcError(INVALID_PARAMS, "prompts/get needs params {name, arguments?}")
        prompt = self.prompts.get(name)
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name!r}")
        kwargs = prompt.bind(params.get("arguments"))
        return self._run_handler(req, prompt, kwargs, modern, lambda value: prompt.to_result(value))

    def _find_resource(self, uri):
        res = self.resources.get(uri)
        if res is not None:
            return res, {}
        for template in sorted(self.templates):
            res = self.templates[template]
            values = res.match(uri)
            if values is not None:
                return res, values
        return None, None

    def _handle_resources_read(self, params, req):
        modern = request_version(params) is not None
        uri = params.get("uri") if type(params) is dict else None
        if type(uri) is not str:
            raise RpcError(INVALID_PARAMS, "resources/read needs params {uri}")
        res, kwargs = self._find_resource(uri)
        if res is None:
            raise RpcError(INVALID_PARAMS if modern else RESOURCE_NOT_FOUND,
                           f"Resource not found: {uri!r}", {"uri": uri})

        def to_result(value):
            result = {"contents": res.contents(uri, value)}
            if modern:
                result.update(ttlMs=0, cacheScope="private")
            return result
        return self._run_handler(req, res, kwargs, modern, to_result)

    def _run_handler(self, req, handler, kwargs, modern, to_result):
        """Run a prompt's or a resource's function for ``req``; its result, shaped by ``to_result``.

        A sync function runs on the loop (they read state the loop owns, like the server's
        own status resources): slow ones should be async. One that takes a Context may ask
        the client: in 2026-07-28 an unanswered ask ends it with an input_required result.
        Bounded by the default deadline.
        """
        if handler.context_param is None and not handler.is_async:
            value = handler.fn(**kwargs)     # fast path: answered now, no task
            if not inspect.isawaitable(value):
                return self._shaped(value, modern, to_result)
            return self._run_async(req, value, modern, to_result)
        if handler.context_param is not None:
            kwargs = dict(kwargs)
            kwargs[handler.context_param] = Context(req, self, handler.log)
        from .prompts import call
        return self._run_async(req, call(handler.fn, kwargs), modern, to_result)

    async def _run_async(self, req, work, modern, to_result):
        from .asking import NeedInput, complete_or_ask
        if self.config.timeout and not req.armed:
            self.dispatcher.table.arm(req, self.config.timeout)
        try:
            value = await (complete_or_ask(work) if modern else work)
        except ToolError as exc:   # e.g. the client declined an ask: say so, not "internal error"
            raise RpcError(INTERNAL_ERROR, str(exc)) from None
        if isinstance(value, NeedInput):
            return value.result
        return self._shaped(value, modern, to_result)

    @staticmethod
    def _shaped(value, modern, to_result):
        result = to_result(value)
        if modern:
            result["resultType"] = "complete"
        return result

    async def _handle_complete(self, params, req):
        modern = request_version(params) is not None
        ref = params.get("ref") if type(params) is dict else None
        argument = params.get("argument") if type(params) is dict else None
        if type(ref) is not dict or type(argument) is not dict or type(argument.get("name")) is not str:
            raise RpcError(INVALID_PARAMS, "completion/complete needs params {ref, argument: {name, value}}")
        context = params.get("context")
        given = context.get("arguments") if type(context) is dict else None
        given = dict(given) if type(given) is dict else {}
        if ref.get("type") == "ref/prompt":
            owner = self.prompts.get(ref.get("name"))
            if owner is None:
                raise RpcError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')!r}")
        elif ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            owner = self.templates.get(uri) or self.resources.get(uri)
            if owner is None:
                raise RpcError(INVALID_PARAMS, f"Unknown resource template: {uri!r}")
        else:
            raise RpcError(INVALID_PARAMS, "ref.type must be 'ref/prompt' or 'ref/resource'")
        fn = owner.completions.get(argument["name"])
        completion = {"values": [], "total": 0, "hasMore": False}
        if fn is not None:
            from .prompts import complete_values
            completion = await complete_values(fn, str(argument.get("value", "")), given)
        result = {"completion": completion}
        if modern:
            result["resultType"] = "complete"
        return result

    # -- the request's connection -------------------------------------------------------

    def connection(self, req):
        """The Connection of ``req``: where its notifications and asks go, and its Peer."""
        if self.route is not None:
            conn = self.route(req)
            if conn is not None:
                return conn
        return self.pipe

    def client_id(self, id):
        """The id the client gave the request the core knows as ``id`` (HTTP renumbers them)."""
        if self.route is not None:
            req = self.dispatcher.table.get(id)
            conn = self.route(req) if req is not None else None
            if conn is not None and hasattr(conn, "id"):
                return conn.id
        return id

    # What the stdio client agreed at initialize.
    protocol_version = property(lambda self: self.pipe.peer.protocol_version if self.pipe else None)
    client_capabilities = property(lambda self: self.pipe.peer.client_capabilities if self.pipe else None)
    log_level = property(lambda self: self.pipe.peer.log_level if self.pipe else None)

    def use_state_key_file(self, path):
        """Sign 2026-07-28 requestState with the key in ``path`` (at least 16 bytes), so a
        retry may reach any process started with the same file. Raises OSError/ValueError."""
        from .asking import RequestState
        self._request_state = RequestState.from_file(path)
        self.config.state_key_file = path

    @property
    def request_state(self):
        """Signs 2026-07-28 requestState: the key from ``use_state_key_file``, else random."""
        if self._request_state is None:
            from .asking import RequestState
            self._request_state = RequestState()
        return self._request_state

    def stopping(self):
        """The transport is about to stop: end open listen streams with their result."""
        self.subscriptions.close()

    def _handle_cancelled(self, params):
        if type(params) is not dict:
            return
        req = self.dispatcher.table.get(params.get("requestId"))
        if req is not None and req.method != "initialize":
            self.dispatcher.cancel(req.id)

    def _timeout_result(self, req):
        seconds = f"{req.deadline - req.start:g}"
        asked = self.waiting_on_client.get(req)
        why = (f" while waiting for the client to answer its {asked[0]} request (id {asked[1]})"
               if asked is not None else "")
        if req.tool is not None:
            return self.tools[req.tool].error_result(
                f"Tool {req.tool!r} timed out after {seconds} s{why} and was stopped", req)
        raise RpcError(-32001, f"Request timed out after {seconds} s{why}")

    # -- events -----------------------------------------------------------------

    def record(self, kind, **fields):
        """A forensics event (watchdog action, plugin failure, protocol abuse, crash)."""
        for recorder in self.recorders:
            try:
                recorder(kind, fields)
            except Exception:
                log.exception("recorder %r failed on %s", recorder, kind)

    def report_crash(self, exc, req=None, where=""):
        """An exception escaped (a tool, a handler, a callback): log it and record a crash."""
        log.error("unhandled exception in %s", where or req, exc_info=exc)
        self.record("crash", exc=exc, request=req, where=where)

    def _on_exception(self, req, exc):
        self.report_crash(exc, req, "request handler" if req is not None else "notification handler")

    def _on_protocol_error(self, kind, size):
        self.record("protocol_error", problem=kind, size=size)

    def tool_crashed(self, tool, req, exc):
        """A tool raised something other than ToolError."""
        self.report_crash(exc, req, f"tool {tool.name!r}")

    # -- talking to the client -------------------------------------------------------

    def peers(self):
        """Every handshake-era client (one over stdio; an HTTP session each): (Peer, notify)."""
        if self.peers_of_transport is not None:
            return self.peers_of_transport()
        return [(self.pipe.peer, self.dispatcher.notify)] if self.pipe is not None else []

    def notify(self, method, params, req=None):
        """Send a notification: about request ``req``, on its connection; without one, to
        every client. Safe from any thread."""
        if self.dispatcher is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._notify(method, params, req)
        else:
            self.loop.call_soon_threadsafe(self._notify, method, params, req)

    def _notify(self, method, params, req):
        if req is not None:
            self.connection(req).notify(method, params)
        elif self.broadcast is not None:
            self.broadcast(method, params)
        else:
            self.dispatcher.notify(method, params)

    def _install_log_forwarding(self, level):
        if self._log_handler is None:
            self._log_handler = _ClientLogHandler(self)
            logging.getLogger().addHandler(self._log_handler)
        level = LOG_LEVELS[level]
        self._log_handler.setLevel(level)
        # The root logger's own level (WARNING by default) would drop records the
        # client asked for before any handler saw them; lower it, never raise it.
        root = logging.getLogger()
        if root.getEffectiveLevel() > level:
            root.setLevel(level)

    # -- running -------------------------------------------------------------------

    def run_in_thread(self, req, fn, kwargs):
        """Run a sync tool in a worker thread; a future of its return value.

        The thread is recorded on the request (and as its owner) so the watchdog can
        interrupt exactly this call, never whatever the thread runs next.
        """
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor  # only once a sync tool runs
            self._executor = ThreadPoolExecutor(self.worker_threads, thread_name_prefix="bemcp-tool")
        owners = self._thread_owner
        guard = self._thread_guard

        def call():
            ident = threading.get_ident()
            with guard:
                owners[ident] = req
                req.thread = ident
            try:
                return fn(**kwargs)
            except ToolInterrupted:
                raise asyncio.CancelledError() from None
            finally:
                with guard:
                    req.thread = None
                    if owners.get(ident) is req:
                        del owners[ident]
                    interrupt_thread(ident, None)  # drop an interrupt that had not landed yet
        return self.loop.run_in_executor(self._executor, call)

    def interrupt_worker(self, req, exc_type):
        """Raise ``exc_type`` in the worker thread running ``req``, once; True if sent."""
        with self._thread_guard:
            ident = req.thread
            if ident is None or self._thread_owner.get(ident) is not req:
                return False
            del self._thread_owner[ident]  # never a second time for this call
            return interrupt_thread(ident, exc_type)

    def asgi_app(self, **options):
        """An ASGI application serving this server over Streamable HTTP (both eras) at ``/mcp``.

        Mount it in Starlette or FastAPI, or run it under any ASGI server. Options:
        path, token (bearer token required on every request), allowed_hosts (host
        names the Host header may carry; None: any), allowed_origins, max_body,
        session_idle (seconds), max_sessions, node (prefix of session ids).
        """
        from .transports.http import HttpTransport
        return HttpTransport(self, **options)

    def run(self):
        """Serve MCP over stdio until stdin closes or a signal arrives; or, with
        ``config.http`` set (``[HOST:]PORT``), over Streamable HTTP until SIGTERM."""
        cfg = self.config
        if cfg.http:
            from .transports.http import run_http
            try:
                code = run_http(self, cfg.http, cfg.http_token_file, cfg.http_allow_origin)
            except (OSError, ValueError) as exc:
                print(f"bemcp: {exc}", file=sys.stderr)
                code = 2
        else:
            from .transports.stdio import run_stdio
            code = run_stdio(self)
        _exit_if_threads_are_stuck(code)
        sys.exit(code)

    async def started(self):
        for callback in self._start_callbacks:
            result = callback()
            if asyncio.iscoroutine(result):
                await result
        self._serving = True

    async def shutdown(self):
        self.tasks.close()
        for callback in reversed(self._shutdown_callbacks):
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("shutdown callback %r failed", callback)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self):
        """Facts for humans and crash reports: name, versions, core in use."""
        return {"name": self.name, "version": self.version, "bemcp": __version__,
                "compiled_core": USE_EXTENSIONS, "python": sys.version.split()[0], "pid": os.getpid(),
                "sandbox": self.sandbox_status()}

    def sandbox_status(self):
        """Whether the programs tools start run sandboxed, and how (server_status, logs)."""
        return self.sandbox.describe() if self.sandbox is not None else {"sandboxed": False}


def _exit_if_threads_are_stuck(code, grace=0.5):
    """Exit at once if a worker thread is still busy after shutdown.

    A sync tool blocked in C never sees an interrupt, and interpreter exit joins
    every worker thread: the server would outlive its client for as long as the
    tool blocks. Threads get ``grace`` seconds to finish first.
    """
    import time
    deadline = time.monotonic() + grace
    me = threading.current_thread()
    busy = [t for t in threading.enumerate() if t is not me and not t.daemon]
    for thread in busy:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in busy if t.is_alive()]
    if stuck:
        log.warning("exiting with %d thread(s) still busy: %s", len(stuck), ", ".join(stuck))
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)


class _ClientLogHandler(logging.Handler):
    """Forwards log records to a handshake-era client that asked with logging/setLevel."""

    _NAMES = {10: "debug", 20: "info", 25: "notice", 30: "warning", 40: "error", 50: "critical"}

    def __init__(self, server):
        super().__init__()
        self.server = server

    def emit(self, record):
        if record.name.startswith("bemcp.transport") or getattr(record, SENT, False):
            return  # never echo the transport's own records back; a request's log went already
        try:
            level = self._NAMES.get(record.levelno - record.levelno % 10, "info")
            self.server.notify("notifications/message",
                               {"level": level, "logger": record.name, "data": record.getMessage()})
        except Exception:
            pass
