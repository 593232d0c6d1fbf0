"""Child processes, as mechanism: spawning, kill trees, bounded output capture, adopted
orphans and the registry of everything bemcp runs. The MCP tools built on them
(run_command, process_*) are in bemcp/builtins/commands.py.

- spawning.py  ``spawn``: fork_exec (or Popen, or the sandbox's spawner), a new session
- child.py     ``Child``: exit and pipes watched on the loop, stdin, tree kills
- capture.py   ``Capture``, ``Spool``, ``ProgressLines``: what is kept of the output
- orphans.py   subreaper: adopted orphans reaped while serving, stopped at exit
- registry.py  ``ProcessRegistry``: the cap, background processes by id, shutdown

Every child leads its own session; a foreground command leaves nothing running, and
server exit stops every tree. The reasons, measurements and known limits are in
docs/processes.md.
"""

from .capture import PROGRESS_INTERVAL, SPOOL_LIMIT, Capture, ProgressLines, Spool
from .child import DRAIN_AFTER_EXIT, DRAIN_AFTER_KILL, REAP_WAIT, Child
from .orphans import adopt_orphans
from .registry import SHUTDOWN_GRACE, Background, ProcessLimitError, ProcessRegistry
from .spawning import SpawnError, spawn

__all__ = ["Background", "Capture", "Child", "DRAIN_AFTER_EXIT", "DRAIN_AFTER_KILL",
           "PROGRESS_INTERVAL", "ProcessLimitError", "ProcessRegistry", "ProgressLines",
           "REAP_WAIT", "SHUTDOWN_GRACE", "SPOOL_LIMIT", "SpawnError", "Spool",
           "adopt_orphans", "spawn"]
