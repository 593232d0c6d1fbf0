"""Plugins: discovery, isolated loading, and their state (the long form: docs/plugins.md).

A plugin is a module or package with ``setup(server)``; ``server`` is a ``PluginServer``,
the narrow facade below. Sources, in order (which also settles name collisions): the
bundled ``bemcp_plugins``, the entry points of group ``bemcp.plugins``, each ``--plugins-dir``.
Each plugin loads in its own thread, all within ``plugin_timeout`` seconds in total.
``bemcp serve`` starts loading once the client's first message (``initialize``) is answered,
or after 0.1 s of silence; until loading ends, the lists, prompts, resources and calls to
tools not yet known wait for it (never longer than the budget). A plugin that raises or misses the budget is
reported and leaves nothing registered. State: ``server.plugins`` (PluginManager),
``bemcp plugins`` and the resource ``bemcp://plugins``.
"""

import asyncio
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from ._os import trim_allocator

log = logging.getLogger("bemcp.plugins")

ENTRY_POINT_GROUP = "bemcp.plugins"
BUNDLED_PACKAGE = "bemcp_plugins"
BUNDLED = ("sysinfo", "files", "http", "git", "search")
RESOURCE_URI = "bemcp://plugins"

LOADED, FAILED, DISABLED = "loaded", "failed", "disabled"
FIRST_MESSAGE_WAIT = 0.1   # seconds loading waits for the client's first message to be answered


class PluginError(Exception):
    """A plugin is not usable as such (no setup function...); the message is the reason."""


@dataclass
class PluginInfo:
    """One plugin as discovered and loaded; ``as_dict()`` is what people and clients see."""

    name: str
    source: str                 # "bundled", "entry point" or "directory"
    origin: str                 # module name, entry point value, or path
    status: str = "pending"     # loaded, failed or disabled
    reason: str = ""            # why it failed or is disabled
    description: str = ""
    version: str = ""
    tools: list = field(default_factory=list)       # names as registered
    renamed: dict = field(default_factory=dict)     # the plugin's tool name -> registered name
    refused: dict = field(default_factory=dict)     # tool name -> why it was not registered
    prompts: list = field(default_factory=list)
    resources: list = field(default_factory=list)
    seconds: float = 0.0
    traceback: str = ""
    reported: bool = field(default=False, repr=False, compare=False)   # its failure is on stderr/forensics

    def as_dict(self):
        d = dataclasses.asdict(self)
        del d["reported"]
        return d


class PluginServer:
    """What a plugin's ``setup(server)`` receives: registration and a few services, nothing
    of the server's internals (the list is in docs/plugins.md, "What setup(server) receives").

    Registrations are held until the plugin has loaded in time, then applied to the real
    server in discovery order (collision rules included); a plugin that fails or times out
    has them dropped, even if its thread registers something later. Once applied, later
    registrations (e.g. from an ``on_start`` callback) go straight through.
    """

    def __init__(self, server, info, manager):
        self._server = server
        self._info = info
        self._manager = manager
        self._lock = threading.Lock()
        self._state = "collecting"   # then "live" or "discarded"
        self._pending = []           # (kind, item) in registration order
        self.plugin = info.name
        self.config = server.config    # the server's settings (roots, command policy, ...)
        self.sandbox = server.sandbox  # the Sandbox commands run in (--sandbox), or None
        self.log = logging.getLogger(f"bemcp.plugin.{info.name}")

    def tool(self, fn=None, **options):
        """``@server.tool`` / ``@server.tool(name=..., ...)``, as on Server."""
        from .tools import Tool

        def register(fn):
            self._add("tool", Tool(fn, self._server, **options))
            return fn
        return register(fn) if fn is not None else register

    def prompt(self, fn=None, **options):
        """``@server.prompt`` / ``@server.prompt(name=..., ...)``, as on Server."""
        from .prompts import Prompt

        def register(fn):
            self._add("prompt", Prompt(fn, **options))
            return fn
        return register(fn) if fn is not None else register

    def resource(self, uri, **options):
        """``@server.resource(uri, ...)``, as on Server (a fixed URI or a URI template)."""
        def register(fn):
            self._add("resource", (uri, options, fn))
            return fn
        return register

    def on_start(self, callback):
        """Call ``callback()`` (sync or async) once the server serves, as on Server."""
        self._add("on_start", callback)
        return callback

    def on_shutdown(self, callback):
        """Call ``callback()`` (sync or async) when the server stops, as on Server."""
        self._add("on_shutdown", callback)
        return callback

    def record(self, kind, **fields):
        """A forensics event (forensics.log), marked with the plugin's name."""
        self._server.record(kind, plugin=self.plugin, **fields)

    def notify_resource_updated(self, uri):
        """Tell the clients subscribed to ``uri`` that it changed; safe from any thread."""
        self._server.notify_resource_updated(uri)

    def _add(self, kind, item):
        with self._lock:
            if self._state == "collecting":
                self._pending.append((kind, item))
                return
            if self._state == "discarded":
                log.debug("plugin %r registered a %s after it was dropped; ignored", self.plugin, kind)
                return
        self._manager.apply(self._info, kind, item)

    def _discard(self):
        with self._lock:
            self._state = "discarded"
            self._pending.clear()

    def _go_live(self):
        with self._lock:
            pending, self._pending = self._pending, []
            self._state = "live"
        for kind, item in pending:
            self._manager.apply(self._info, kind, item)


class _Job:
    """Loading one plugin in its own thread."""

    def __init__(self, info, load, proxy):
        self.info = info
        self.load = load
        self.proxy = proxy
        self.phase = "import"
        self.finished = False
        self.error = None
        self.thread = threading.Thread(target=self.run, name=f"bemcp-plugin-{info.name}", daemon=True)
        self.started = 0.0
        self.guard = None

    def run(self):
        try:
            self._run()
        finally:
            if self.guard is not None:
                self.guard.thread_done(self.thread)
            self.proxy._manager._changed.set()

    def _run(self):
        error = None
        try:
            setup = self.load(self.info)
            self.phase = "setup"
            setup(self.proxy)
        except BaseException as exc:  # a plugin's SystemExit must not stop the server either
            error = exc
        with self.proxy._lock:
            if self.proxy._state == "discarded":
                return  # too late: the loader has already given up on us
            self.error = error
            self.finished = True
            self.info.seconds = round(time.monotonic() - self.started, 4)
        if error is not None:   # said now, not when the slowest plugin is done
            self.proxy._manager._settle(self, 0.0)


class _LoaderStdout:
    """sys.stdout while plugins load: their writes go to stderr, never to the protocol.

    After loading it stays installed only while an abandoned (timed-out) plugin thread
    is alive, redirecting just those threads, and steps aside when the last one ends.
    """

    def __init__(self, real):
        self.real = real
        self.everything = True
        self.threads = set()
        self._lock = threading.Lock()

    def _target(self):
        if self.everything or threading.current_thread() in self.threads:
            return sys.stderr
        return self.real

    def write(self, data):
        return self._target().write(data)

    def flush(self):
        self._target().flush()

    def __getattr__(self, name):
        return getattr(self._target(), name)

    def loading_done(self):
        with self._lock:
            self.everything = False
            self.threads = {t for t in self.threads if t.is_alive()}
            self._step_aside()

    def thread_done(self, thread):
        with self._lock:
            self.threads.discard(thread)
            if not self.everything:
                self._step_aside()

    def _step_aside(self):
        if not self.threads and sys.stdout is self:
            sys.stdout = self.real


class PluginManager:
    """Discovers, loads and describes the plugins of one server (``server.plugins``)."""

    def __init__(self, server):
        self.server = server
        self.config = server.config
        self.enabled = bool(self.config.plugins)
        self.plugins = []          # PluginInfo, in discovery order
        self.abandoned = []        # threads of plugins that timed out and may still run
        self._owners = {}          # tool name -> plugin name
        self._jobs = []            # the plugins loading now
        self._settling = threading.Lock()   # a job is settled (and reported) once, by whoever is first
        self._changed = threading.Event()   # a plugin finished loading, or the server is stopping
        self._stopping = False

    # -- discovery ---------------------------------------------------------------

    def discover(self):
        """(info, loader) pairs in load order; duplicates and bad directories as failed infos."""
        found = []
        found += [(PluginInfo(name, "bundled", f"{BUNDLED_PACKAGE}.{name}"), _load_bundled)
                  for name in BUNDLED]
        found += self._entry_points()
        for directory in self.config.plugin_dirs:
            found += self._directory(directory)
        return found

    def _entry_points(self):
        try:
            eps = sorted(scan_entry_points(ENTRY_POINT_GROUP))
        except Exception as exc:
            log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
            return []
        found = []
        for name, value, version in eps:
            info = PluginInfo(name, "entry point", value)
            info.version = version
            found.append((info, lambda info, value=value: _setup_of(_load_reference(value), info)))
        return found

    def _directory(self, directory):
        path = os.path.abspath(os.path.expanduser(directory))
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            info = PluginInfo(directory, "directory", path, status=FAILED,
                              reason=f"cannot read plugin directory: {exc.strerror or exc}")
            return [(info, None)]
        found = []
        for entry in names:
            if entry.startswith(("_", ".")):
                continue
            full = os.path.join(path, entry)
            if entry.endswith(".py") and os.path.isfile(full):
                found.append((PluginInfo(entry[:-3], "directory", full), _load_file))
            elif os.path.isfile(os.path.join(full, "__init__.py")):
                found.append((PluginInfo(entry, "directory", full), _load_file))
        return found

    # -- loading -------------------------------------------------------------------

    def load(self):
        """Load every enabled plugin (bounded by ``plugin_timeout`` in total) and report."""
        self.apply_loaded(self.load_detached())
        return self

    async def load_in_background(self):
        """Load while the server already serves: imports in a worker thread, registrations here.

        ``server.tools_ready`` completes once the plugins' tools are registered, so
        tools/list never answers without them (it waits at most the budget).
        """
        loop = asyncio.get_running_loop()
        # The client's first message (initialize) is answered before plugin imports compete
        # with it for the GIL; a client that says nothing waits for plugins no longer for it.
        dispatcher = self.server.dispatcher
        deadline = loop.time() + FIRST_MESSAGE_WAIT
        while dispatcher is not None and dispatcher.received == 0 and loop.time() < deadline:
            await asyncio.sleep(0.002)
        try:
            jobs = await loop.run_in_executor(None, self.load_detached)
            self.apply_loaded(jobs)
        except Exception as exc:  # a bug here must not take the server down
            log.exception("loading plugins failed")
            self.server.record("plugin_failed", plugin="*", reason=f"the plugin loader failed: {exc!r}",
                               traceback=traceback.format_exc())
        finally:
            self.server.tools_ready.set()
            trim_allocator()  # loading freed a lot: hand it back rather than keep it for bursts

    def load_detached(self):
        """Discover and run the loaders; the jobs whose registrations are still to apply."""
        if not self.enabled:
            log.info("plugins disabled")
            return []
        only = set(self.config.plugin_only)
        disabled = set(self.config.plugin_disable)
        seen = {}
        jobs = []
        for info, loader in self.discover():
            self.plugins.append(info)
            if info.status == FAILED:
                continue
            if info.name in seen:
                info.status = FAILED
                info.reason = f"another plugin named {info.name!r} ({seen[info.name].origin}) came first"
            elif info.name in disabled:
                info.status, info.reason = DISABLED, "disabled by plugin_disable / --disable-plugin"
            elif only and info.name not in only:
                info.status, info.reason = DISABLED, "not named by plugin_only / --plugin"
            else:
                jobs.append(_Job(info, loader, PluginServer(self.server, info, self)))
            seen.setdefault(info.name, info)
        for name in sorted(only - set(seen)):
            self.plugins.append(PluginInfo(name, "unknown", "", status=FAILED,
                                           reason="no plugin of this name was found"))
        for info in self.plugins:   # what failed before loading: said before any plugin runs
            if info.status == FAILED:
                self._report_failure(info)
        if jobs:
            self._run(jobs)
        return jobs

    def apply_loaded(self, jobs):
        """Register what loaded in time, in discovery order (collisions resolve the same way every time)."""
        for job in jobs:
            if job.info.status == LOADED:
                job.proxy._go_live()
        for info in self.plugins:
            if info.status == FAILED:
                self._report_failure(info)   # once: most were said as they happened
        loaded = sum(1 for i in self.plugins if i.status == LOADED)
        log.info("plugins: %d loaded, %d failed", loaded, sum(1 for i in self.plugins if i.status == FAILED))

    def _run(self, jobs):
        budget = float(self.config.plugin_timeout)
        guard = _LoaderStdout(sys.stdout)
        saved_fd = _redirect_fd1()
        sys.stdout = guard
        try:
            if any(job.info.source == "bundled" for job in jobs):
                try:
                    _bundled_package()  # import the parent once, here, not in racing threads
                except Exception:
                    pass  # each bundled plugin then fails with the import error as its reason
            self._jobs = jobs
            for job in jobs:
                job.guard = guard
                guard.threads.add(job.thread)
                job.started = time.monotonic()
                job.thread.start()
            deadline = time.monotonic() + budget
            while not self._stopping:   # until all are done, the budget is spent or the server stops
                self._changed.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or all(job.finished or not job.thread.is_alive() for job in jobs):
                    break
                self._changed.wait(remaining)
            for job in jobs:
                with job.proxy._lock:
                    if not job.finished:
                        job.proxy._state = "discarded"
                        job.proxy._pending.clear()
                self._settle(job, budget, why=self._abandoned(job) if self._stopping else None)
        finally:
            _restore_fd1(saved_fd)
            guard.loading_done()
            self.abandoned = [job.thread for job in jobs if job.thread.is_alive()]
            self._jobs = []

    def _settle(self, job, budget, why=None):
        """Decide ``job``'s outcome once (``why``: it was given up on, for that reason), and
        report a failure at once. Under the lock: a plugin's thread may be reporting its own
        failure, and loading is not over until that report is made."""
        info = job.info
        with self._settling:
            if info.status != "pending":
                return
            if not job.finished:
                info.status = FAILED
                info.reason = why or f"timed out after {budget:g} s (during {job.phase})"
                info.seconds = round(time.monotonic() - job.started, 4)
                frame = sys._current_frames().get(job.thread.ident)
                if frame is not None:
                    info.traceback = "Stack of the plugin thread when it was abandoned:\n" + \
                        "".join(traceback.format_stack(frame))
            elif job.error is not None:
                exc = job.error
                info.status = FAILED
                info.reason = str(exc) if isinstance(exc, PluginError) else \
                    f"{job.phase} failed: {type(exc).__name__}: {exc}"
                info.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            else:
                info.status = LOADED
                return
            self._report_failure(info)

    def abandon_loading(self):
        """The server is stopping while plugins load: every plugin still loading is given up
        on and reported, so none leaves without a word."""
        self._stopping = True
        self._changed.set()   # the loader stops waiting for them
        for job in list(self._jobs):
            with job.proxy._lock:
                if job.finished:
                    continue
                job.proxy._state = "discarded"
                job.proxy._pending.clear()
            self._settle(job, 0.0, why=self._abandoned(job))

    @staticmethod
    def _abandoned(job):
        return f"abandoned at exit after {time.monotonic() - job.started:.1f} s (during {job.phase})"

    def _report_failure(self, info):
        if info.reported:
            return
        info.reported = True
        log.warning("plugin %r (%s %s) failed: %s", info.name, info.source, info.origin, info.reason)
        self.server.record("plugin_failed", plugin=info.name, source=info.source, origin=info.origin,
                           reason=info.reason, traceback=info.traceback)

    # -- registrations ---------------------------------------------------------------

    def apply(self, info, kind, item):
        """Register one held item of ``info``'s plugin with the real server."""
        server = self.server
        try:
            if kind == "tool":
                self._add_tool(info, item)
            elif kind == "resource":
                uri, options, fn = item
                if uri in server.resources or uri in server.templates:
                    info.refused[uri] = "a resource with this URI is already registered"
                    log.warning("plugin %r: resource %s already registered; refused", info.name, uri)
                else:
                    server.resource(uri, **options)(fn)
                    info.resources.append(uri)
            elif kind == "prompt":
                if item.name in server.prompts:
                    info.refused[item.name] = "a prompt with this name is already registered"
                    log.warning("plugin %r: prompt %r already registered; refused", info.name, item.name)
                else:
                    server.add_prompt(item)
                    info.prompts.append(item.name)
            elif kind == "on_start":
                server.on_start(item)
            elif kind == "on_shutdown":
                server.on_shutdown(item)
        except Exception as exc:
            log.exception("plugin %r: registering a %s failed", info.name, kind)
            info.refused[getattr(item, "name", kind)] = f"{type(exc).__name__}: {exc}"

    def _add_tool(self, info, tool):
        server = self.server
        name = tool.name
        if name not in server.tools:
            server.add_tool(tool)
            info.tools.append(name)
            self._owners[name] = info.name
            return
        owner = self._owners.get(name, "bemcp")
        alternative = f"{re.sub(r'[^A-Za-z0-9_-]', '_', info.name)}_{name}"
        if alternative in server.tools or len(alternative) > 128:
            info.refused[name] = f"name taken by {owner}, and {alternative!r} is taken too"
            log.warning("plugin %r: tool %r is taken by %s; refused", info.name, name, owner)
            self.server.record("plugin_collision", plugin=info.name, tool=name, owner=owner, registered_as=None)
            return
        tool.name = alternative
        tool.log = logging.getLogger(f"bemcp.tool.{alternative}")
        server.add_tool(tool)
        info.tools.append(alternative)
        info.renamed[name] = alternative
        self._owners[alternative] = info.name
        log.warning("plugin %r: tool %r is taken by %s; registered as %r", info.name, name, owner, alternative)
        self.server.record("plugin_collision", plugin=info.name, tool=name, owner=owner,
                           registered_as=alternative)

    # -- what people and clients see ----------------------------------------------------

    def snapshot(self):
        """A JSON-ready description of every plugin (the ``bemcp://plugins`` resource)."""
        counts = {s: sum(1 for i in self.plugins if i.status == s) for s in (LOADED, FAILED, DISABLED)}
        return {"enabled": self.enabled, "timeout": self.config.plugin_timeout, **counts,
                "plugins": [info.as_dict() for info in self.plugins]}


# -- loaders (run in the plugin's thread) -------------------------------------------------

def _setup_of(obj, info):
    """The setup callable of a loaded module, or the callable an entry point names."""
    import types
    if isinstance(obj, types.ModuleType):
        info.description = info.description or (obj.__doc__ or "").strip().split("\n")[0]
        info.version = info.version or str(getattr(obj, "__version__", "") or "")
        setup = getattr(obj, "setup", None)
    else:
        setup = obj
    if not callable(setup):
        raise PluginError("the plugin has no setup(server) function")
    return setup


def _load_bundled(info):
    return _setup_of(importlib.import_module(info.origin), info)


def _load_file(info):
    """Import a plugin file or package from a --plugins-dir, under a private module name."""
    path = info.origin
    module_name = "_bemcp_plugin_" + re.sub(r"\W", "_", info.name)
    if os.path.isdir(path):
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(path, "__init__.py"),
                                                      submodule_search_locations=[path])
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(module_name) is module:
            del sys.modules[module_name]
        raise
    return _setup_of(module, info)


def _bundled_package():
    """Import ``bemcp_plugins``; in a source checkout (not installed) load it from ``plugins/``."""
    try:
        return importlib.import_module(BUNDLED_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != BUNDLED_PACKAGE:
            raise
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")
    init = os.path.join(here, "__init__.py")
    if not os.path.isfile(init):
        raise ModuleNotFoundError(f"No module named {BUNDLED_PACKAGE!r}", name=BUNDLED_PACKAGE)
    spec = importlib.util.spec_from_file_location(BUNDLED_PACKAGE, init, submodule_search_locations=[here])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUNDLED_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def _redirect_fd1():
    """Point fd 1 at stderr while plugins load (a plugin's os.write(1) or child process)."""
    _flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


def _restore_fd1(saved):
    if saved is None:
        return
    _flush_stdout()  # what a plugin left in a stdout buffer goes to stderr, where fd 1 still points
    try:
        os.dup2(saved, 1)
    finally:
        os.close(saved)


def _flush_stdout():
    for stream in {id(s): s for s in (sys.stdout, sys.__stdout__) if s is not None}.values():
        try:
            stream.flush()
        except Exception:
            pass


# -- public entry points ---------------------------------------------------------------------

def load_plugins(server, background=False):
    """Load the plugins ``server.config`` asks for; ``server.plugins`` is the PluginManager.

    With ``background``, loading starts once the server serves (initialize is never
    held up by a slow plugin). Also registers the resource ``bemcp://plugins``
    (loaded and failed plugins, reasons, tools).
    """
    manager = PluginManager(server)
    server.plugins = manager
    if RESOURCE_URI not in server.resources:
        server.resource(RESOURCE_URI, name="plugins",
                        description="bemcp plugins: loaded, failed (with reasons) and disabled, with their tools"
                        )(manager.snapshot)
    if background and manager.enabled:
        server.tools_ready.clear()
        server.on_start(lambda: server.loop.create_task(manager.load_in_background()))
        server.on_shutdown(manager.abandon_loading)
        return manager
    try:
        manager.load()
    except Exception as exc:  # a bug here must not keep the server from starting
        log.exception("loading plugins failed")
        server.record("plugin_failed", plugin="*", reason=f"the plugin loader failed: {exc!r}",
                      traceback=traceback.format_exc())
    return manager


def scan_entry_points(group):
    """(name, "module:attr", version) for each entry point in ``group`` of the installed distributions.

    Reads each ``*.dist-info/entry_points.txt`` on sys.path directly: importlib.metadata
    would cost every server start about 25 ms and 3 MB for the same answer. As with
    importlib.metadata, the first distribution of a name on sys.path wins.
    """
    seen = set()
    found = []
    for base in sys.path:
        try:
            entries = sorted(os.listdir(base or "."))
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".dist-info"):
                dist = entry[:-len(".dist-info")].rsplit("-", 1)[0]
            elif entry.endswith(".egg-info"):
                dist = entry[:-len(".egg-info")].split("-", 1)[0]
            else:
                continue
            key = re.sub(r"[-_.]+", "-", dist).lower()
            if key in seen:
                continue
            seen.add(key)
            folder = os.path.join(base or ".", entry)
            try:
                with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            points = _entry_point_section(text, group)
            if points:
                version = _dist_version(folder)
                found += [(name, value, version) for name, value in points]
    return found


def _entry_point_section(text, group):
    section = None
    points = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, value = line.split("=", 1)
            points.append((name.strip(), value.split("[", 1)[0].strip()))
    return points


def _dist_version(folder):
    for meta in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, meta), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return ""


def _load_reference(value):
    """The object an entry point names: "module" or "module:attr.attr"."""
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj
