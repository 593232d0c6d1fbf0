"""``--sandbox``: the roots become a wall, enforced by the kernel (Landlock), for every
program bemcp starts.

One Landlock ruleset is built when the server starts, from the roots and the system
directories, and kept open. Every sandboxed program is started as the exec helper
(``bemcp-sandbox-exec``, compiled from ``sandbox_exec.c`` next to this file) with the
ruleset's descriptor: between its exec and the program's, the helper sets
no_new_privs, drops every capability, installs a small seccomp filter and enforces the
ruleset. The process tools skip that extra exec where the compiled spawner
(``_spawn.c``) is built: it takes the same steps (``confine.h``) in its own vfork
child. Either way no Python runs between fork and exec: no ``preexec_fn``.

A sandboxed program may
  - read, write, create, remove and execute under the roots and a private directory
    (its ``HOME`` and ``TMPDIR``, made at start, removed at exit);
  - read and execute in the system directories (``/usr``, ``/bin``, ``/sbin``,
    ``/lib*``), the server's PATH directories (but never ``/`` or the home directory
    or one above it), the server's own Python installation, and ``sandbox_read``;
  - read ``/etc``, entry by entry: what every user of the machine may read, less the
    known secrets (``ETC_SECRETS``), since a root-owned secret is readable by a
    program running as root even without capabilities;
  - read ``/proc`` (its own processes; other processes' private files are guarded by
    Landlock's ptrace check), a few ``/sys`` directories and ``/dev`` nodes
    (``/dev/null``, ``/dev/zero``, ``/dev/full``, ``/dev/random``, ``/dev/urandom``);
  - with ``--sandbox-allow-net``, use TCP and UDP; without it, no IPv4 or IPv6 at all;
and it may not signal or ptrace a process outside its sandbox, nor connect to an
abstract Unix socket made outside it. docs/security.md says what this does not cover.

Landlock ABI 6 (Linux 6.12) is the least that gives every rule; with less, or without
the helper, ``Sandbox`` raises SandboxError and ``bemcp serve --sandbox`` refuses to
start. ``BEMCP_LANDLOCK_ABI=N`` makes bemcp act as if the kernel offered at most ABI N
(0: no Landlock), to check that refusal without another kernel; it can only lower
what the kernel offers, never raise it.
"""

import fnmatch
import logging
import os
import stat
import sys

log = logging.getLogger("bemcp.sandbox")

HELPER_NAME = "bemcp-sandbox-exec"
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), HELPER_NAME)
ABI_NEEDED = 6
ABI_ENV = "BEMCP_LANDLOCK_ABI"

# Landlock's access rights (include/uapi/linux/landlock.h), with the ABI that brought them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REFER = 1 << 13          # ABI 2: link or rename across directories
FS_TRUNCATE = 1 << 14       # ABI 3
FS_IOCTL_DEV = 1 << 15      # ABI 5
FS_ALL = (1 << 16) - 1
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP = 1 << 0       # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0   # ABI 6
SCOPE_SIGNAL = 1 << 1

READ = FS_READ_FILE | FS_READ_DIR
READ_EXEC = READ | FS_EXECUTE
DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYS_DIRS = ("/sys/devices/system/cpu", "/sys/fs/cgroup")   # CPU count, container limits
DEVICES = {"/dev/null": DEVICE, "/dev/zero": DEVICE, "/dev/full": DEVICE,
           "/dev/random": FS_READ_FILE, "/dev/urandom": FS_READ_FILE}
# Never granted under /etc, whatever their permissions say (paths relative to /etc).
ETC_SECRETS = ("shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d",
               "ssh/ssh_host_*_key", "ssl/private", "pki/tls/private", "krb5.keytab",
               "security/opasswd", "NetworkManager/system-connections", "wireguard",
               "letsencrypt", "credstore", "credstore.encrypted", "ipsec.secrets",
               "ipsec.d/private", "ppp/*-secrets", "openvpn", "master.passwd", "doas.conf")
# Variables naming what lies outside the wall (agents, buses, the real home's
# directories): not passed, so programs fall back to the private home.
ENV_DROPPED = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS",
               "DOCKER_HOST", "CONTAINER_HOST", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
               "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "DISPLAY",
               "WAYLAND_DISPLAY", "XAUTHORITY", "KRB5CCNAME", "PULSE_SERVER",
               "SSH_ASKPASS", "GIT_ASKPASS", "TMUX", "STY")

_SYS_CREATE_RULESET = 444   # the same number on every architecture (unified since 5.1)
_SYS_ADD_RULE = 445
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1


class SandboxError(ValueError):
    """``--sandbox`` cannot be honoured here (the message says what is missing)."""

    no_usage = True   # `bemcp serve` prints the one line, not its usage text


def kernel_abi():
    """The Landlock ABI this kernel offers (0: none)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, abi)


def landlock_abi():
    """The ABI bemcp uses: the kernel's, lowered by $BEMCP_LANDLOCK_ABI if set."""
    abi = kernel_abi()
    wanted = os.environ.get(ABI_ENV, "").strip()
    if wanted:
        try:
            abi = min(abi, max(0, int(wanted)))
        except ValueError:
            raise SandboxError(f"{ABI_ENV}={wanted!r}: give a whole number (the highest "
                               f"Landlock ABI to use)") from None
    return abi


def check_support(abi=None):
    """Raise SandboxError unless this system can run the sandbox."""
    abi = landlock_abi() if abi is None else abi
    if abi == 0:
        where = "which this kernel does not offer" if sys.platform.startswith("linux") \
            else f"which is Linux's, and this is {sys.platform}"
        raise SandboxError(
            f"--sandbox needs Landlock, {where} (Linux 6.12 or later, with "
            f"CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= boot parameter). "
            f"Enable it, or run without --sandbox.")
    if abi < ABI_NEEDED:
        raise SandboxError(
            f"--sandbox needs Landlock ABI {ABI_NEEDED} (Linux 6.12) to keep commands from "
            f"signalling other processes and reaching abstract Unix sockets; this kernel "
            f"offers ABI {abi}. Upgrade the kernel, or run without --sandbox.")
    if not os.access(HELPER, os.X_OK):
        raise SandboxError(
            f"--sandbox needs its exec helper {HELPER}, which was not built (bemcp builds "
            f"it on Linux x86-64 and AArch64, with a C compiler). Reinstall bemcp from "
            f"source there, or run without --sandbox.")
    return abi


class Sandbox:
    """The ruleset every sandboxed program runs under, built once.

    ``roots``: directories a program may read and write (real paths); ``allow_net``:
    TCP and UDP allowed; ``read``: more directories to read and execute from.
    """

    def __init__(self, roots, allow_net=False, read=(), environ=None):
        self.abi = check_support()
        self.allow_net = bool(allow_net)
        self.roots = []
        for root in roots:
            real = os.path.realpath(os.path.expanduser(root))
            if not os.path.isdir(real):
                raise SandboxError(f"--root {root}: not a directory")
            self.roots.append(real)
        environ = os.environ if environ is None else environ
        import tempfile
        self.private = tempfile.mkdtemp(prefix="bemcp-sandbox-")
        self.home = os.path.join(self.private, "home")
        self.tmp = os.path.join(self.private, "tmp")
        self.fd = -1
        try:
            os.mkdir(self.home, 0o700)
            os.mkdir(self.tmp, 0o700)
            self.rules = self._rules(read, environ)
            self.fd = self._build()
            self._flags = "n" if self.allow_net else "-"
            self._fd_arg = str(self.fd)
            _drop_bounding_set()
            self._probe()
        except BaseException:
            self.close()
            raise
        import atexit
        atexit.register(self.close)   # `bemcp tools` never shuts a server down
        self.spawn = _compiled_spawner()
        self.env_fixed = dict.fromkeys(ENV_DROPPED)
        self.env_fixed.update(HOME=self.home, TMPDIR=self.tmp, TMP=self.tmp, TEMP=self.tmp)

    @classmethod
    def from_config(cls, cfg, environ=None):
        """The sandbox ``cfg`` asks for: roots from ``--root`` (else the working directory)."""
        return cls(list(cfg.roots) or [os.getcwd()], cfg.sandbox_allow_net, cfg.sandbox_read,
                   environ)

    # -- the rules ---------------------------------------------------------------------

    def _rules(self, read, environ):
        """[(real path, access)]: one rule per path, none beneath another granting as much."""
        home = os.path.realpath(os.path.expanduser("~"))
        rules = [(root, FS_ALL) for root in self.roots]
        rules += [(self.home, FS_ALL), (self.tmp, FS_ALL)]
        executable = list(SYSTEM_DIRS)
        executable += (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
        for path in (environ.get("PATH") or os.defpath).split(os.pathsep):
            if os.path.isabs(path):
                real = os.path.realpath(path)
                # Never a PATH entry that would open the home directory (or everything).
                if real != "/" and not (home + "/").startswith(real.rstrip("/") + "/"):
                    executable.append(real)
        for path in read or ():
            real = os.path.realpath(os.path.expanduser(path))
            if not os.path.exists(real):
                raise SandboxError(f"--sandbox-read {path}: no such file or directory")
            executable.append(real)
        rules += [(path, READ_EXEC) for path in executable]
        rules += [(path, READ) for path in etc_entries()]
        rules += [("/proc", READ)] + [(path, READ) for path in SYS_DIRS]
        rules += list(DEVICES.items())
        granted = {}
        for path, access in rules:
            real = os.path.realpath(path)
            if os.path.exists(real):
                granted[real] = granted.get(real, 0) | access
        # A rule beneath another that grants as much adds nothing but cost: every rule is
        # copied into each command's Landlock domain.
        return [(path, access) for path, access in granted.items()
                if not any(granted.get(parent, 0) & access == access for parent in _parents(path))]

    def _build(self):
        import ctypes

        class RulesetAttr(ctypes.Structure):
            _fields_ = [("handled_access_fs", ctypes.c_uint64),
                        ("handled_access_net", ctypes.c_uint64),
                        ("scoped", ctypes.c_uint64)]

        class PathBeneathAttr(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        handled = FS_ALL & ~(0 if self.abi >= 5 else FS_IOCTL_DEV)
        attr = RulesetAttr(handled, 0 if self.allow_net else NET_BIND_TCP | NET_CONNECT_TCP,
                           SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
        fd = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr),
                          ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
        if fd < 0:
            err = ctypes.get_errno()
            raise SandboxError(f"--sandbox: cannot create the Landlock ruleset: {os.strerror(err)}")
        try:
            for path, access in self.rules:
                try:
                    target = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue   # gone since it was listed
                try:
                    if not stat.S_ISDIR(os.fstat(target).st_mode):
                        access &= FILE_RIGHTS
                    rule = PathBeneathAttr(access & handled, target)
                    if libc.syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(fd),
                                    ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                    ctypes.c_uint32(0)) != 0:
                        err = ctypes.get_errno()
                        raise SandboxError(f"--sandbox: cannot add the rule for {path}: "
                                           f"{os.strerror(err)}")
                finally:
                    os.close(target)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _probe(self):
        """Confine a process that exits at once: every step works here, or we refuse."""
        import subprocess
        done = subprocess.run([HELPER, self._fd_arg, self._flags, "--probe"],
                              pass_fds=(self.fd,), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=10)
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
            raise SandboxError(f"--sandbox: the kernel refused to confine a test process ({why}). "
                               f"Run without --sandbox, or on a system that allows it.")

    # -- starting programs ---------------------------------------------------------------

    def command(self, executable, argv):
        """The argv that runs ``executable`` (invoked as ``argv``) inside the sandbox.

        The child must inherit ``self.fd``. A program the sandbox cannot start (or a
        confinement that fails) shows on its stderr, with exit status 126 or 127.
        """
        return [HELPER, self._fd_arg, self._flags, executable, *argv]

    def confine_env(self, env):
        """``env`` as a sandboxed program gets it: the private home and temporary
        directory, no pointers to agents and buses outside."""
        env = {name: value for name, value in env.items() if name not in self.env_fixed}
        env.update((name, value) for name, value in self.env_fixed.items() if value is not None)
        return env

    # -- what it is -----------------------------------------------------------------------

    def describe(self):
        """For server_status, the start record and `bemcp tools`."""
        return {"sandboxed": True, "landlock_abi": self.abi, "roots": list(self.roots),
                "network": self.allow_net, "home": self.home, "tmpdir": self.tmp,
                "rules": len(self.rules), "spawner": "vfork" if self.spawn else "exec helper"}

    def summary(self):
        net = "network allowed" if self.allow_net else "no network"
        return (f"commands run sandboxed (Landlock ABI {self.abi}): read-write in "
                f"{', '.join(self.roots)} and a private temporary directory, read-only "
                f"system directories, {net}")

    def tool_note(self):
        """A sentence for the command tools' descriptions: what a model should expect."""
        net = "" if self.allow_net else " and has no network access"
        return (f"\n\nThe server runs every command in a sandbox: a program can read and "
                f"write only under {', '.join(self.roots)} and its private $TMPDIR, reads "
                f"system directories{net}; anything else fails with \"Permission denied\".")

    def close(self):
        """Close the ruleset and remove the private directory (at server exit)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.private:
            import shutil
            shutil.rmtree(self.private, ignore_errors=True)
            self.private = None


def _compiled_spawner():
    """The compiled spawner's ``spawn``, unless the extensions are off (then, or where it
    was not built, commands start through the exec helper: as confined, one exec slower)."""
    from .._core import NO_EXTENSIONS
    if NO_EXTENSIONS:
        return None
    try:
        from ._spawn import spawn
    except ImportError:
        log.warning("the compiled sandbox spawner is missing: commands start through the "
                    "exec helper (as confined, slower)")
        return None
    return spawn


def _drop_bounding_set():
    """Empty this thread's capability bounding set, where it may (it keeps its own
    effective capabilities: only what it starts is affected).

    The thread that builds the sandbox is the one that starts every command (the event
    loop's). Its children would have the helper drop each capability anyway, at a cost
    of a credentials copy per capability (~40 us a command, measured); dropped here once,
    the helper only checks. Nothing bemcp starts with --sandbox is meant to hold a
    capability, the log writer and the programs of third-party plugins included.
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_read, pr_capbset_drop = 23, 24
    for cap in range(64):
        has = libc.prctl(pr_capbset_read, ctypes.c_ulong(cap), 0, 0, 0)
        if has < 0:
            break
        if has and libc.prctl(pr_capbset_drop, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            return   # not ours to drop (no CAP_SETPCAP): the helper does what it must


def _parents(path):
    """The directories above ``path``, nearest first."""
    while path not in ("/", ""):
        path = os.path.dirname(path)
        yield path


def etc_entries(top="/etc"):
    """The paths under ``top`` a sandboxed program may read: the largest subtrees that
    every user of the machine may read and that hold no secret (ETC_SECRETS)."""
    grants = []
    if _public(top, "", grants):
        grants.append(top)
    return grants


def _public(path, rel, grants):
    """True if all of ``path`` may be granted as one rule, None for a symlink (judged at
    its target), False if not; the grantable parts of a False directory, and the
    targets of its symlinks that need a rule of their own, go to ``grants``."""
    if rel and any(fnmatch.fnmatchcase(rel, pattern) for pattern in ETC_SECRETS):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        # resolv.conf often links into /run: grant that one file when every user may read it.
        target = os.path.realpath(path)
        if target.startswith(("/run/", "/var/")):
            try:
                tst = os.stat(target)
            except OSError:
                return None
            if stat.S_ISREG(tst.st_mode) and tst.st_mode & stat.S_IROTH:
                grants.append(target)
        return None
    if not st.st_mode & stat.S_IROTH:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return True
    if not st.st_mode & stat.S_IXOTH:
        return False
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return False
    whole, parts, extra = True, [], []
    for name in names:
        child = os.path.join(path, name)
        verdict = _public(child, f"{rel}/{name}" if rel else name, extra)
        if verdict:
            parts.append(child)
        elif verdict is False:
            whole = False
    grants += extra if whole else parts + extra
    return whole
