"""The `bemcp` command."""

import os
import signal
import sys

from . import config


def build_parser(only=None):
    """The command line; ``only``: build just that command's parser (``bemcp serve`` starts
    without building, or importing, what the other commands need; with plain flags it
    needs no parser at all: config.parse_serve_flags)."""
    import argparse

    from . import __version__
    parser = argparse.ArgumentParser(prog="bemcp",
                                     description="A fast, trustworthy MCP server (stdio and Streamable HTTP).",
                                     formatter_class=config.help_formatter)
    parser.add_argument("--version", action="version", version=f"bemcp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help):
        if only is not None and name != only:
            return None
        return sub.add_parser(name, help=help, formatter_class=config.help_formatter)
    serve = command("serve", "serve MCP over stdio (what MCP clients spawn), or over HTTP with --http")
    tools = command("tools", "list the tools `bemcp serve` would offer")
    if tools is not None:
        tools.add_argument("--json", action="store_true", help="print the tools/list entries as JSON")
    plugins = command("plugins", "list plugins: loaded, failed (with reasons), their tools")
    if plugins is not None:
        plugins.add_argument("--json", action="store_true", help="print the plugin states as JSON")
    for p in (serve, tools, plugins):
        if p is not None:
            config.add_arguments(p)
    logs = command("logs", "summarise the logs: recent tasks, per-tool timings, errors, watchdog actions, "
                           "crash reports")
    if logs is not None:
        from .logs.summary import add_arguments as add_logs_arguments
        add_logs_arguments(logs)
    bench = command("bench", "benchmark bemcp, its peers and any MCP server (stdio or HTTP): "
                             "results.json, report.md, plots")
    if bench is not None:
        from .bench import add_arguments as add_bench_arguments
        add_bench_arguments(bench)
    return parser


def make_server(cfg, serving=False):
    """The server `bemcp serve` runs, configured by ``cfg`` (a Config).

    ``serving``: plugins load once the server is up (for `bemcp serve`), rather than now.
    """
    from . import Server, __version__
    from .builtins import register_builtins
    from .plugins import load_plugins
    from .logs import setup_logging
    server = Server("bemcp", version=__version__, config=cfg)
    setup_logging(server)
    register_builtins(server)
    load_plugins(server, background=serving)
    return server


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    serving = argv[:1] == ["serve"]
    parser = None
    args = config.parse_serve_flags(argv[1:]) if serving else None
    if args is None:
        parser = build_parser(only="serve" if serving else None)
        args = parser.parse_args(argv)
    if args.command in ("serve", "tools", "plugins"):
        try:
            cfg = config.Config.load(args.config, args)
            server = make_server(cfg, serving=args.command == "serve")  # conflicting settings fail here
        except (OSError, ValueError) as exc:
            if getattr(exc, "no_usage", False):   # not a mistake in the flags: no usage text
                sys.stderr.write(f"bemcp {args.command}: {exc}\n")
                return 2
            # The message on stderr, exit status 2.
            (parser or build_parser(only=args.command)).error(str(exc))
    if args.command == "serve":
        server.run()
        return 0
    try:
        status = report(args, server if args.command in ("tools", "plugins") else None, parser)
        sys.stdout.flush()    # a closed pipe shows here, inside this handler, not at exit
        return status
    except BrokenPipeError:
        # The reader left early (`bemcp tools | head`): stop quietly, as if by SIGPIPE.
        # stdout is pointed at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def report(args, server, parser):
    """The commands that print a report on stdout; returns the exit status."""
    if args.command == "tools":
        show_tools(server, args.json)
        return 0
    if args.command == "plugins":
        return show_plugins(server, args.json)
    if args.command == "logs":
        from .logs.summary import run as show_logs
        return show_logs(args)
    if args.command == "bench":
        from .bench import run as bench
        return bench(args)
    parser.print_help()
    return 2


def show_tools(server, as_json):
    tools = sorted(server.tools.values(), key=lambda t: t.name)
    if as_json:
        import orjson
        sys.stdout.write(orjson.dumps([t.definition() for t in tools], option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if "run_command" in server.tools:
        sandbox = server.sandbox
        print(f"# {sandbox.summary()}" if sandbox is not None else
              "# commands run without a sandbox (--sandbox confines them: docs/security.md)")
    for tool in tools:
        props = tool.input_schema.get("properties", {})
        required = set(tool.input_schema.get("required", ()))
        args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_name(v)}" for k, v in props.items())
        # The first paragraph, unwrapped: a docstring's first sentence may span lines.
        summary = " ".join((tool.description or "").strip().split("\n\n")[0].split())
        print(f"{tool.name}({args})")
        if summary:
            print(f"    {summary}")


def show_plugins(server, as_json=False, out=None):
    """Print ``bemcp plugins`` for ``server`` (built by make_server); the exit status is 1
    when a plugin failed, else 0."""
    from .plugins import DISABLED, FAILED, LOADED
    out = out or sys.stdout
    manager = server.plugins
    snap = manager.snapshot()
    if as_json:
        import orjson
        out.write(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 1 if snap[FAILED] else 0
    if not manager.enabled:
        out.write("plugins are disabled (--no-plugins, BEMCP_NO_PLUGINS or plugins = false)\n")
        return 0
    for info in manager.plugins:
        where = f"{info.source}: {info.origin}" if info.origin else info.source
        if info.status == LOADED:
            out.write(f"{info.name:<12} loaded    ({where}, {info.seconds * 1000:.0f} ms)\n")
        else:
            out.write(f"{info.name:<12} {info.status.upper():<9} ({where})\n")
            out.write(f"    reason: {info.reason}\n")
        if info.description:
            out.write(f"    {info.description}\n")
        for label, names in (("tools", info.tools), ("prompts", info.prompts), ("resources", info.resources)):
            if names:
                out.write(f"    {label}: {', '.join(names)}\n")
        for original, registered in info.renamed.items():
            out.write(f"    renamed: {original} -> {registered} (name already taken)\n")
        for name, why in info.refused.items():
            out.write(f"    refused: {name}: {why}\n")
    out.write(f"{snap[LOADED]} loaded, {snap[FAILED]} failed, {snap[DISABLED]} disabled\n")
    return 1 if snap[FAILED] else 0


def _type_name(schema):
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array[{_type_name(schema['items'])}]"
    if "enum" in schema:
        return "|".join(map(repr, schema["enum"]))
    if "anyOf" in schema:
        return "|".join(_type_name(s) for s in schema["anyOf"])
    return kind or "any"


if __name__ == "__main__":
    sys.exit(main())
