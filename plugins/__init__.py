"""bemcp's bundled plugins (installed as the package ``bemcp_plugins``).

Each module exposes ``setup(server)``; bemcp.plugins loads them in this order:
sysinfo, files, http, git, search. Heavy imports (psutil, urllib, subprocess machinery)
happen inside the tools, so loading stays quick.
"""
