"""MCP tasks: a long tool call runs detached, and the client polls for it.

Two wire forms share one implementation:
- 2025-11-25 (handshake era): a ``tools/call`` carrying ``params.task`` answers
  ``{task}`` at once; the client uses tasks/get, tasks/result, tasks/list and
  tasks/cancel, and gets notifications/tasks/status on each change.
- 2026-07-28 extension ``io.modelcontextprotocol/tasks``: when the request's client
  capabilities declare the extension, a call to a tool with task support answers
  ``{resultType: "task", taskId, ...}``; tasks/get carries the result or error
  once terminal; tasks/update and tasks/cancel acknowledge.

A task's work is an ordinary entry in the in-flight table (key ``("task", id)``),
so deadlines, limits, cancellation and the watchdog apply to it unchanged; this
module keeps the task records, their retention (ttl) and the per-client bound.
"""

import asyncio
import os
from time import monotonic

from ._core import STATE_CANCELLED, RpcError
from .errors import INVALID_PARAMS, METHOD_NOT_FOUND, MISSING_CLIENT_CAPABILITY, SERVER_BUSY
from .revisions import CLIENT_CAPABILITIES_KEY, TASKS_EXTENSION, request_version

RELATED_TASK_KEY = "io.modelcontextprotocol/related-task"
TERMINAL = frozenset(("completed", "failed", "cancelled"))


def _now_iso():
    from datetime import datetime, timezone  # not on the start path: only tasks need it
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskRecord:
    __slots__ = ("task_id", "tool", "status", "message", "created", "updated", "ttl_ms",
                 "expires", "result", "error", "modern", "done")

    def __init__(self, task_id, tool, ttl_ms, modern, loop):
        self.task_id = task_id
        self.tool = tool
        self.status = "working"
        self.message = None
        self.created = self.updated = _now_iso()
        self.ttl_ms = ttl_ms
        self.expires = monotonic() + ttl_ms / 1000
        self.result = None
        self.error = None
        self.modern = modern
        self.done = loop.create_future()

    @property
    def key(self):
        return ("task", self.task_id)


class TaskManager:
    """Task records for one server (one stdio client), bounded in number and time."""

    def __init__(self, server, max_tasks=1000, default_ttl_ms=300_000, max_ttl_ms=3_600_000,
                 poll_interval_ms=500):
        self.server = server
        self.max_tasks = max_tasks
        self.default_ttl_ms = default_ttl_ms
        self.max_ttl_ms = max_ttl_ms
        self.poll_interval_ms = poll_interval_ms
        self.tasks = {}
        self._sweeper = None

    def handlers(self):
        """The task methods, for the server to register with the dispatcher."""
        return {"tasks/get": self._handle_get, "tasks/result": self._handle_result,
                "tasks/list": self._handle_list, "tasks/cancel": self._handle_cancel,
                "tasks/update": self._handle_update}

    def attach(self, dispatcher):
        """The server built its dispatcher: tasks run through it."""
        self.dispatcher = dispatcher
        self.loop = self.server.loop

    def route_for(self, tool):
        """The dispatcher route for a tool with task support (None without)."""
        if tool.task_support not in ("optional", "required"):
            return None
        return lambda id, params: self._route(tool, id, params)

    # -- starting a task -------------------------------------------------------

    def _route(self, tool, id, params):
        modern = request_version(params) is not None
        if modern:
            meta = params.get("_meta") or {}
            caps = meta.get(CLIENT_CAPABILITIES_KEY) or {}
            wants = isinstance(caps, dict) and TASKS_EXTENSION in (caps.get("extensions") or {})
            if not wants:
                if tool.task_support == "required":
                    raise RpcError(MISSING_CLIENT_CAPABILITY,
                                   f"Tool {tool.name!r} runs only as a task: declare the {TASKS_EXTENSION} extension",
                                   {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})
                return False
            ttl = None
        else:
            task_meta = params.get("task")
            if task_meta is None:
                if tool.task_support == "required":
                    raise RpcError(METHOD_NOT_FOUND, f"Tool {tool.name!r} must be called as a task (params.task)")
                return False
            if type(task_meta) is not dict:
                raise RpcError(INVALID_PARAMS, "Invalid params: task must be an object {ttl?}")
            ttl = task_meta.get("ttl")
            if ttl is not None and (type(ttl) is not int or ttl <= 0):
                raise RpcError(INVALID_PARAMS, "Invalid params: task.ttl must be a positive integer (ms)")
        record = self._create(tool.name, ttl, modern)
        created = self.describe(record)
        if modern:
            created["resultType"] = "task"
            self.dispatcher.send({"jsonrpc": "2.0", "id": id, "result": created})
        else:
            self.dispatcher.send({"jsonrpc": "2.0", "id": id, "result": {"task": created}})
        self.dispatcher.begin_tool(record.key, tool.name, params,
                                   lambda result, error: self._settled(record, result, error))
        return True

    def _create(self, tool, ttl, modern):
        if len(self.tasks) >= self.max_tasks:
            self._evict()
        if len(self.tasks) >= self.max_tasks:
            raise RpcError(SERVER_BUSY, f"Too many tasks: {self.max_tasks} are running; wait for some to finish",
                           {"limit": self.max_tasks})
        ttl_ms = min(max(ttl or self.default_ttl_ms, 1000), self.max_ttl_ms)
        record = TaskRecord(os.urandom(16).hex(), tool, ttl_ms, modern, self.loop)
        self.tasks[record.task_id] = record
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(1.0, self._sweep)
        return record

    def _settled(self, record, result, error):
        if record.status in TERMINAL:
            return
        if error is not None:
            record.status = "failed"
            record.error = error.to_dict()
            record.message = error.message
        elif result is None:
            record.status = "cancelled"
            record.message = "The task was cancelled"
        else:
            record.status = "completed"
            record.result = result
            if isinstance(result, dict) and result.get("isError"):
                record.message = "The tool reported an error"
        record.updated = _now_iso()
        if not record.done.done():
            record.done.set_result(None)
        if not record.modern:
            self.server.notify("notifications/tasks/status", self.describe(record))

    # -- the task methods ------------------------------------------------------------

    def describe(self, record, detailed=False):
        task = {"taskId": record.task_id, "status": record.status,
                "createdAt": record.created, "lastUpdatedAt": record.updated}
        if record.message:
            task["statusMessage"] = record.message
        if record.modern:
            task["ttlMs"] = record.ttl_ms
            task["pollIntervalMs"] = self.poll_interval_ms
            if detailed and record.status == "completed":
                task["result"] = record.result
            elif detailed and record.status == "failed":
                task["error"] = record.error
        else:
            task["ttl"] = record.ttl_ms
            task["pollInterval"] = self.poll_interval_ms
        return task

    def _find(self, params):
        task_id = params.get("taskId") if type(params) is dict else None
        record = self.tasks.get(task_id) if type(task_id) is str else None
        if record is None:
            raise RpcError(INVALID_PARAMS, f"Unknown task: {task_id!r}")
        return record

    def _handle_get(self, params, req):
        modern = request_version(params) is not None
        record = self._find(params)
        result = self.describe(record, detailed=modern)
        if modern:
            result["resultType"] = "complete"
        return result

    async def _handle_result(self, params, req):
        if request_version(params) is not None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: tasks/result (use tasks/get in 2026-07-28)")
        record = self._find(params)
        await asyncio.shield(record.done)
        if record.status == "failed":
            raise RpcError(record.error["code"], record.error["message"], record.error.get("data"))
        if record.status == "cancelled":
            raise RpcError(INVALID_PARAMS, f"Task {record.task_id} was cancelled; it has no result")
        result = dict(record.result)
        result["_meta"] = dict(result.get("_meta") or {}, **{RELATED_TASK_KEY: {"taskId": record.task_id}})
        return result

    def _handle_list(self, params, req):
        if request_version(params) is not None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: tasks/list")
        records = sorted(self.tasks.values(), key=lambda r: r.created, reverse=True)
        return {"tasks": [self.describe(r) for r in records]}

    def _handle_cancel(self, params, req):
        modern = request_version(params) is not None
        record = self._find(params)
        if record.status in TERMINAL:
            if modern:
                return {"resultType": "complete"}
            raise RpcError(INVALID_PARAMS, f"Task {record.task_id} is already {record.status}")
        self.cancel(record)
        return {"resultType": "complete"} if modern else self.describe(record)

    def _handle_update(self, params, req):
        if request_version(params) is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: tasks/update (2026-07-28 tasks extension)")
        self._find(params)
        # bemcp's tools never ask for input mid-task: every response key is unknown, so ignored.
        return {"resultType": "complete"}

    def cancel(self, record):
        running = self.dispatcher.table.get(record.key)
        if running is None or not self.dispatcher.stop(running, STATE_CANCELLED, None):
            self._settled(record, None, None)

    # -- retention -------------------------------------------------------------------

    def _sweep(self):
        self._sweeper = None
        now = monotonic()
        for record in [r for r in self.tasks.values() if r.expires <= now]:
            if record.status not in TERMINAL:
                self.cancel(record)
            del self.tasks[record.task_id]
        if self.tasks:
            self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _evict(self):
        """Drop the oldest finished task to make room (running ones are kept)."""
        finished = [r for r in self.tasks.values() if r.status in TERMINAL]
        if finished:
            del self.tasks[min(finished, key=lambda r: r.expires).task_id]

    def close(self):
        if self._sweeper is not None:
            self._sweeper.cancel()
