"""Settings for `bemcp serve`: defaults, then the config file, then command-line flags.

The config file is TOML (``--config FILE`` or ``$BEMCP_CONFIG``); its keys are the
field names below, e.g. ``allow = ["git", "ls"]`` or ``[tool_limits] run_command = 4``.
"""

import os

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


def add_arguments(parser):
    """The flags of `bemcp serve` (and of commands that build the same server)."""
    a = parser.add_argument
    a("--config", metavar="FILE", help="TOML settings file (also $BEMCP_CONFIG)")
    a("--timeout", type=float, metavar="SECONDS", help="default deadline of a tool call (300)")
    a("--max-message-size", type=int, metavar="BYTES", help="largest accepted message (64 MiB)")
    a("--state-key-file", metavar="PATH",
      help="key signing 2026-07-28 requestState, shared by servers behind one client (default: random)")
    g = parser.add_argument_group("commands")
    g.add_argument("--shell", action="store_true", default=None,
                   help="run string commands under /bin/sh -c (refused together with --allow)")
    g.add_argument("--allow", action="append", metavar="NAME", help="allow only these executables (repeatable)")
    g.add_argument("--deny", action="append", metavar="NAME", help="refuse this executable (repeatable)")
    g.add_argument("--root", action="append", dest="roots", metavar="DIR",
                   help="commands and files stay inside DIR (repeatable)")
    g.add_argument("--command-timeout", type=float, metavar="SECONDS", help="run_command default timeout (60)")
    g.add_argument("--max-output", type=int, metavar="BYTES", help="output kept per stream (1 MiB)")
    g.add_argument("--max-processes", type=int, metavar="N", help="concurrent child processes (64)")
    g.add_argument("--sandbox", action="store_true", default=None,
                   help="confine every program started to the roots, kernel-enforced (Landlock)")
    g.add_argument("--sandbox-allow-net", action="store_true", default=None,
                   help="let sandboxed programs use the network")
    g.add_argument("--sandbox-read", action="append", metavar="DIR",
                   help="let sandboxed programs also read and execute in DIR (repeatable)")
    g = parser.add_argument_group("watchdog")
    g.add_argument("--no-watchdog", action="store_false", dest="watchdog", default=None,
                   help="no escalation, lock-up or memory watch (deadlines and limits still hold)")
    g.add_argument("--max-inflight", type=int, metavar="N", help="concurrent tool calls (0: unlimited)")
    g.add_argument("--max-queued", type=int, metavar="N", help="tool calls waiting for a slot (1024)")
    g.add_argument("--memory-soft-mb", type=int, metavar="MB", help="refuse new work above this RSS")
    g.add_argument("--memory-hard-mb", type=int, metavar="MB", help="kill work above this RSS")
    g = parser.add_argument_group("plugins")
    g.add_argument("--no-plugins", action="store_false", dest="plugins", default=None,
                   help="load no plugins (also $BEMCP_NO_PLUGINS=1)")
    g.add_argument("--plugin", action="append", dest="plugin_only", metavar="NAME", help="load only this plugin")
    g.add_argument("--disable-plugin", action="append", dest="plugin_disable", metavar="NAME")
    g.add_argument("--plugins-dir", action="append", dest="plugin_dirs", metavar="DIR",
                   help="load plugins from DIR (repeatable)")
    g = parser.add_argument_group("logs")
    g.add_argument("--log-dir", metavar="DIR", help="where log files go (default: the user state directory)")
    g.add_argument("--no-log-files", action="store_false", dest="log_files", default=None)
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="stderr level (warning)")
    add_http_arguments(parser)


def add_http_arguments(parser):
    """Streamable HTTP instead of stdio (needs the extra: pip install "bemcp[http]")."""
    g = parser.add_argument_group("http")
    g.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve MCP over Streamable HTTP at http://HOST:PORT/mcp (host 127.0.0.1)")
    g.add_argument("--http-token-file", metavar="PATH",
                   help="require Authorization: Bearer <the file's token> (also $BEMCP_HTTP_TOKEN); "
                        "needed to bind a non-loopback address")
    g.add_argument("--http-allow-origin", action="append", metavar="ORIGIN",
                   help="a browser Origin allowed besides the server's own host (repeatable)")


def help_formatter(prog):
    """argparse's help formatter, told the terminal's width.

    Left to find it, argparse imports shutil, and with it bz2 and lzma: 0.8 MB of
    every `bemcp serve`, which parses its flags with argparse too.
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
