"""Settings for `bemcp serve`: defaults, then the config file, then command-line flags.

The config file is TOML (``--config FILE`` or ``$BEMCP_CONFIG``); its keys are the
field names below, e.g. ``allow = ["git", "ls"]`` or ``[tool_limits] run_command = 4``.
"""

import os
import types

MiB = 1024 * 1024


class Config:
    """Every setting of `bemcp serve`: ``Config(timeout=5.0)`` is the defaults with that one changed.

    A plain class rather than a dataclass: generating a dataclass's methods for this
    many fields costs more than a millisecond of every start. The annotated class
    attributes below are the fields and their defaults; a list or dict default is
    copied for each instance.
    """

    # Protocol and requests.
    timeout: float = 300.0                 # default deadline of a tool call, seconds
    tool_timeouts: dict = {}               # tool name -> seconds
    max_message_size: int = 64 * MiB
    state_key_file: str = ""               # HMAC key of 2026-07-28 requestState (empty: random per process)
    # Streamable HTTP (empty: stdio).
    http: str = ""                         # [HOST:]PORT
    http_token_file: str = ""              # bearer token required on every request
    http_allow_origin: list = []           # browser origins allowed besides our own
    # Commands and processes.
    shell: bool = False                    # strings run under /bin/sh -c
    allow: list = []                       # executables allowed (empty: any)
    deny: list = []                        # executables refused
    roots: list = []                       # directories commands and files may use
    env_allow: list = []                   # names/globs passed to children (empty: default filter)
    env_deny: list = []                    # names/globs never passed
    command_timeout: float = 60.0
    command_timeout_max: float = 3600.0
    max_output: int = 1 * MiB              # bytes kept per stream of run_command
    max_processes: int = 64
    kill_grace: float = 2.0                # SIGTERM -> SIGKILL
    sandbox: bool = False                  # confine every program started (Landlock)
    sandbox_allow_net: bool = False        # ... but let it use the network
    sandbox_read: list = []                # more directories it may read and execute
    # Watchdog.
    watchdog: bool = True
    max_inflight: int = 0                  # concurrent tool calls (0: unlimited)
    max_queued: int = 1024                 # calls waiting for a slot
    tool_limits: dict = {}                 # tool name -> concurrent calls
    memory_soft_mb: int = 0                # 0: derived from the machine's memory
    memory_hard_mb: int = 0
    lag_threshold: float = 1.0             # loop blocked this long: record a stack
    lag_interrupt: float = 5.0             # ... this long: interrupt the blocking code
    # Plugins.
    plugins: bool = True
    plugin_only: list = []                 # load only these (empty: all)
    plugin_disable: list = []
    plugin_dirs: list = []
    plugin_timeout: float = 2.0
    # Logs.
    log_dir: str = ""                      # empty: the per-user state directory
    log_files: bool = True
    log_level: str = "warning"             # stderr
    log_bodies: bool = False               # keep message bodies in crash reports

    def __init__(self, **settings):
        for key, default in _DEFAULTS.items():
            setattr(self, key, _copy(default))
        for key, value in settings.items():
            if key not in _DEFAULTS:
                raise TypeError(f"Config() got an unexpected setting {key!r}")
            setattr(self, key, value)

    def as_dict(self):
        """Every setting by name (lists and dicts copied)."""
        return {key: _copy(getattr(self, key)) for key in _DEFAULTS}

    def __repr__(self):
        return "Config(" + ", ".join(f"{key}={getattr(self, key)!r}" for key in _DEFAULTS) + ")"

    def __eq__(self, other):
        return type(other) is type(self) and self.as_dict() == other.as_dict()

    __hash__ = None

    @classmethod
    def load(cls, path=None, args=None):
        """Defaults, overridden by the TOML file at ``path``, overridden by parsed ``args``."""
        config = cls()
        path = path or os.environ.get("BEMCP_CONFIG")
        if path:
            config.update(read_toml(path), source=path)
        if args is not None:
            config.update({k: v for k, v in vars(args).items() if v is not None and k in _DEFAULTS},
                          source="command line")
        if os.environ.get("BEMCP_NO_PLUGINS"):
            config.plugins = False
        return config

    def update(self, values, source):
        for key, value in values.items():
            if key not in _DEFAULTS:
                raise ValueError(f"{source}: unknown setting {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool) and not isinstance(value, bool) or \
               isinstance(current, (int, float)) and not isinstance(current, bool) and \
               (isinstance(value, bool) or not isinstance(value, (int, float))) or \
               isinstance(current, (list, dict, str)) and not isinstance(value, type(current)):
                raise ValueError(f"{source}: {key} must be {type(current).__name__}, not {value!r}")
            setattr(self, key, type(current)(value) if isinstance(current, float) else value)


_DEFAULTS = {key: getattr(Config, key) for key in Config.__annotations__}


def _copy(value):
    return value.copy() if isinstance(value, (list, dict)) else value


def read_toml(path):
    import tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


# The flags of `bemcp serve` by help group: (flag, kind, setting, metavar, help). kind: str, int
# or float (one value), list (repeatable), True or False (a switch setting it so), or a tuple of
# the values allowed. argparse is built from this table (help, errors), and so is the fast path.
FLAGS = {
    None: (
        ("--config", str, "config", "FILE", "TOML settings file (also $BEMCP_CONFIG)"),
        ("--timeout", float, "timeout", "SECONDS", "default deadline of a tool call (300)"),
        ("--max-message-size", int, "max_message_size", "BYTES", "largest accepted message (64 MiB)"),
        ("--state-key-file", str, "state_key_file", "PATH",
         "key signing 2026-07-28 requestState, shared by servers behind one client (default: random)"),
    ),
    "commands": (
        ("--shell", True, "shell", None, "run string commands under /bin/sh -c (refused together with --allow)"),
        ("--allow", list, "allow", "NAME", "allow only these executables (repeatable)"),
        ("--deny", list, "deny", "NAME", "refuse this executable (repeatable)"),
        ("--root", list, "roots", "DIR", "commands and files stay inside DIR (repeatable)"),
        ("--command-timeout", float, "command_timeout", "SECONDS", "run_command default timeout (60)"),
        ("--max-output", int, "max_output", "BYTES", "output kept per stream (1 MiB)"),
        ("--max-processes", int, "max_processes", "N", "concurrent child processes (64)"),
        ("--sandbox", True, "sandbox", None, "confine every program started to the roots, kernel-enforced (Landlock)"),
        ("--sandbox-allow-net", True, "sandbox_allow_net", None, "let sandboxed programs use the network"),
        ("--sandbox-read", list, "sandbox_read", "DIR",
         "let sandboxed programs also read and execute in DIR (repeatable)"),
    ),
    "watchdog": (
        ("--no-watchdog", False, "watchdog", None,
         "no escalation, lock-up or memory watch (deadlines and limits still hold)"),
        ("--max-inflight", int, "max_inflight", "N", "concurrent tool calls (0: unlimited)"),
        ("--max-queued", int, "max_queued", "N", "tool calls waiting for a slot (1024)"),
        ("--memory-soft-mb", int, "memory_soft_mb", "MB", "refuse new work above this RSS"),
        ("--memory-hard-mb", int, "memory_hard_mb", "MB", "kill work above this RSS"),
    ),
    "plugins": (
        ("--no-plugins", False, "plugins", None, "load no plugins (also $BEMCP_NO_PLUGINS=1)"),
        ("--plugin", list, "plugin_only", "NAME", "load only this plugin"),
        ("--disable-plugin", list, "plugin_disable", "NAME", None),
        ("--plugins-dir", list, "plugin_dirs", "DIR", "load plugins from DIR (repeatable)"),
    ),
    "logs": (
        ("--log-dir", str, "log_dir", "DIR", "where log files go (default: the user state directory)"),
        ("--no-log-files", False, "log_files", None, None),
        ("--log-level", ("debug", "info", "warning", "error"), "log_level", None, "stderr level (warning)"),
    ),
    # Streamable HTTP instead of stdio (needs the extra: pip install "bemcp[http]").
    "http": (
        ("--http", str, "http", "[HOST:]PORT", "serve MCP over Streamable HTTP at http://HOST:PORT/mcp (host 127.0.0.1)"),
        ("--http-token-file", str, "http_token_file", "PATH",
         "require Authorization: Bearer <the file's token> (also $BEMCP_HTTP_TOKEN); "
         "needed to bind a non-loopback address"),
        ("--http-allow-origin", list, "http_allow_origin", "ORIGIN",
         "a browser Origin allowed besides the server's own host (repeatable)"),
    ),
}
_BY_FLAG = {flag: (kind, setting) for rows in FLAGS.values() for flag, kind, setting, _, _ in rows}


def add_arguments(parser):
    """The flags of `bemcp serve` (and of commands that build the same server)."""
    for group in FLAGS:
        _add_group(parser, group)


def add_http_arguments(parser):
    """Streamable HTTP instead of stdio (needs the extra: pip install "bemcp[http]")."""
    _add_group(parser, "http")


def _add_group(parser, group):
    add = (parser if group is None else parser.add_argument_group(group)).add_argument
    for flag, kind, setting, metavar, help in FLAGS[group]:
        if kind is True or kind is False:
            add(flag, action="store_true" if kind else "store_false", dest=setting, default=None, help=help)
        elif type(kind) is tuple:
            add(flag, choices=list(kind), dest=setting, help=help)
        elif kind is list:
            add(flag, action="append", dest=setting, metavar=metavar, help=help)
        else:
            add(flag, type=None if kind is str else kind, dest=setting, metavar=metavar, help=help)


def parse_serve_flags(argv):
    """`bemcp serve`'s flags as parsed arguments, without argparse; None for anything else.

    Only the plain forms: exact flag names, ``--flag``, ``--flag VALUE`` (a value not
    starting with ``-``) and ``--flag=VALUE``, each value valid. Anything else (help,
    an abbreviation, a mistake) returns None, and argparse parses and explains it.
    argparse's import and parser are half a megabyte and a few milliseconds of a start.
    """
    values = dict.fromkeys(setting for _, setting in _BY_FLAG.values())
    i = 0
    while i < len(argv):
        flag, given, value = argv[i].partition("=")
        i += 1
        kind, setting = _BY_FLAG.get(flag, (None, None))
        if setting is None:
            return None
        if kind is True or kind is False:
            if given:
                return None
            values[setting] = kind
            continue
        if not given:
            if i == len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
            i += 1
        if kind is int or kind is float:
            try:
                value = kind(value)
            except ValueError:
                return None
        elif type(kind) is tuple and value not in kind:
            return None
        elif kind is list:
            value = (values[setting] or []) + [value]
        values[setting] = value
    return types.SimpleNamespace(command="serve", **values)


def help_formatter(prog):
    """argparse's help formatter, told the terminal's width.

    Left to find it, argparse imports shutil, and with it bz2 and lzma: 0.8 MB of
    every command that parses its flags with argparse.
    """
    import argparse
    try:
        width = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            width = os.get_terminal_size(1).columns
        except OSError:
            width = 80
    return argparse.HelpFormatter(prog, width=max(40, width - 2))


def parse(argv):
    """Config from a list of flags (for tests and embedding)."""
    import argparse
    parser = argparse.ArgumentParser(formatter_class=help_formatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return Config.load(args.config, args)
