"""Command security: what may start, where, with what environment, and how confined.

- policy.py      ``Policy.prepare``: a tool's command checked and turned into a ``Launch``
- shellwords.py  command strings split as a shell would, shell syntax refused
- launchers.py   which program a launcher (env, xargs, sudo, ...) would start
- roots.py       ``Roots``: the one "inside the roots" check, for commands and file plugins
- sandbox.py     ``--sandbox``: the kernel-enforced confinement and its exec helper,
                 imported only when asked for (nothing of it is on the plain start path)

The rules and their limits: docs/security.md.
"""

from .errors import PolicyConfigError, PolicyError, ShellSyntaxError
from .policy import Launch, Policy
from .roots import Roots

__all__ = ["Launch", "Policy", "PolicyConfigError", "PolicyError", "Roots", "ShellSyntaxError",
           "command_policy"]


def command_policy(config, sandbox=None):
    """The server's command policy for a plugin that starts programs itself.

    ``--allow``/``--deny``, the environment filter and, with a ``sandbox``, its private
    HOME and TMPDIR; the working directory is not bounded here (the plugin checks it
    against its own roots). ``policy.prepare(argv, cwd)`` returns a Launch (``argv``,
    ``executable``, ``cwd``, ``env``) or raises PolicyError with a message for the user.
    """
    return Policy(allow=config.allow, deny=config.deny, env_allow=config.env_allow,
                  env_deny=config.env_deny, sandbox=sandbox)
