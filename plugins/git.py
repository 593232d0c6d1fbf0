"""Git, read-only: status, log, diff and show of a repository inside the roots.

Runs the ``git`` command with argument lists (never a shell), no pager, no prompts, and
with the repository's external diff drivers, text conversions and fsmonitor hook turned
off, so reading a repository cannot run code it names. The server's command policy applies
as to run_command: ``--allow``/``--deny`` decide whether git may run, and git gets the
filtered environment (no tokens or secrets); with ``--sandbox`` it runs confined like
every command. The repository's top level must be inside a root. Output is cut at ``max_bytes`` (default 256 KiB); a call stops after 30 s.
"""

import asyncio
import os
import re
import signal
from typing import Annotated

from bemcp import ToolError

from ._roots import plugin_roots

TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 256 * 1024
MAX_BYTES_CAP = 4 * 1024 * 1024
STDERR_MAX = 16 * 1024
# Options that keep a repository's own configuration from running programs.
SAFE_OPTIONS = ("-c", "core.fsmonitor=false", "-c", "core.pager=cat", "-c", "core.quotepath=off",
                "-c", "color.ui=never", "--no-pager")
REF = re.compile(r"[^\s\x00-\x1f\x7f~^:?*\[\\-][^\s\x00-\x1f\x7f]*\Z")  # no option-like or odd refs

READ_ONLY = {"readOnlyHint": True, "openWorldHint": False}
MaxBytes = Annotated[int, {"minimum": 1024, "maximum": MAX_BYTES_CAP}]


def setup(server):
    roots = plugin_roots(server.config)
    launcher = GitLauncher(server.config, server.sandbox)

    async def repository(repo):
        """The top level of the repository holding ``repo``; ToolError if none or outside the roots."""
        path = roots.resolve(repo)
        if not os.path.isdir(path):
            path = os.path.dirname(path)
        out, _ = await launcher.run(path, ["rev-parse", "--show-toplevel"], 64 * 1024)
        top = os.path.realpath(out.decode("utf-8", "replace").strip())
        if not roots.contains(top):
            raise ToolError(f"the repository at {top} reaches outside the allowed roots "
                            f"({', '.join(roots.dirs)})")
        return top

    def paths_in(top, path):
        if path is None:
            return []
        real = roots.resolve(path, must_exist=False)
        if not (real == top or real.startswith(top.rstrip(os.sep) + os.sep)):
            raise ToolError(f"{path!r} is outside the repository {top}")
        return ["--", real]

    @server.tool(annotations=READ_ONLY)
    async def git_status(repo: str = ".") -> dict:
        """Branch, upstream, ahead/behind, and changed, staged and untracked files.

        Args:
            repo: A directory inside the repository (relative to the first root).
        """
        top = await repository(repo)
        args = ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal"]
        out, _ = await launcher.run(top, args, MAX_BYTES_CAP)
        return parse_status(out, top)

    @server.tool(annotations=READ_ONLY)
    async def git_log(repo: str = ".", limit: Annotated[int, {"minimum": 1, "maximum": 500}] = 20,
                      ref: str | None = None, path: str | None = None,
                      skip: Annotated[int, {"minimum": 0}] = 0) -> dict:
        """Commits, newest first: hash, author, date and subject.

        Args:
            repo: A directory inside the repository.
            limit: At most this many commits.
            ref: Start from this branch, tag or commit (default: HEAD).
            path: Only commits touching this file or directory.
            skip: Skip this many commits first (paging).
        """
        top = await repository(repo)
        fmt = "%H%x1f%h%x1f%an%x1f%ae%x1f%aI%x1f%P%x1f%s%x1e"
        args = ["log", f"--format={fmt}", f"--max-count={limit + 1}", f"--skip={skip}", "--no-ext-diff"]
        if ref:
            args.append(check_ref(ref))
        out, _ = await launcher.run(top, args + paths_in(top, path), MAX_BYTES_CAP)
        commits = []
        for record in out.decode("utf-8", "replace").split("\x1e"):
            fields = record.strip("\n").split("\x1f")
            if len(fields) != 7:
                continue
            full, short, author, email, date, parents, subject = fields
            commits.append({"hash": full, "short": short, "author": author, "email": email,
                            "date": date, "parents": parents.split(), "subject": subject})
        more = len(commits) > limit
        return {"repository": top, "commits": commits[:limit], "more": more,
                "next_skip": skip + limit if more else None}

    @server.tool(annotations=READ_ONLY)
    async def git_diff(repo: str = ".", ref: str | None = None, staged: bool = False,
                       path: str | None = None, context: Annotated[int, {"minimum": 0, "maximum": 100}] = 3,
                       stat: bool = False, max_bytes: MaxBytes = DEFAULT_MAX_BYTES) -> str:
        """A unified diff: the work tree against the index, or ``staged`` changes, or against ``ref``.

        Args:
            repo: A directory inside the repository.
            ref: Compare with this commit or range (e.g. HEAD~3, main...topic).
            staged: Show what is staged (the index against HEAD, or against ``ref``).
            path: Only this file or directory.
            context: Lines of context around each change.
            stat: Only a per-file summary (--stat) instead of the patch.
            max_bytes: Cut the output here.
        """
        top = await repository(repo)
        args = ["diff", "--no-ext-diff", "--no-textconv", "--no-color", f"-U{context}"]
        if staged:
            args.append("--cached")
        if stat:
            args.append("--stat")
        if ref:
            args.append(check_ref(ref))
        out, cut = await launcher.run(top, args + paths_in(top, path), max_bytes)
        return render(out, cut, max_bytes) or "(no differences)"

    @server.tool(annotations=READ_ONLY)
    async def git_show(repo: str = ".", ref: str = "HEAD", path: str | None = None, stat: bool = False,
                       max_bytes: MaxBytes = DEFAULT_MAX_BYTES) -> str:
        """A commit (message and patch), or a file as it was at ``ref`` when ``path`` is given.

        Args:
            repo: A directory inside the repository.
            ref: A commit, branch or tag.
            path: Show this file's content at ``ref`` instead of the commit.
            stat: For a commit: the message and a per-file summary, no patch.
            max_bytes: Cut the output here.
        """
        top = await repository(repo)
        ref = check_ref(ref)
        if path is not None:
            real = paths_in(top, path)[1]
            rel = os.path.relpath(real, top).replace(os.sep, "/")
            out, cut = await launcher.run(top, ["show", "--no-textconv", f"{ref}:{rel}"], max_bytes)
            if b"\0" in out[:8192]:
                return f"({rel} at {ref} is a binary file)"
            return render(out, cut, max_bytes)
        args = ["show", "--no-ext-diff", "--no-textconv", "--no-color", "--format=fuller"]
        if stat:
            args.append("--stat")
        out, cut = await launcher.run(top, args + [ref], max_bytes)
        return render(out, cut, max_bytes)


def check_ref(ref):
    """Refuse refs that could be read as options or are not refs at all."""
    if not REF.match(ref) or ref.startswith("-"):
        raise ToolError(f"{ref!r} is not a valid ref or commit range")
    return ref


def render(out, cut, max_bytes):
    text = out.decode("utf-8", "replace")
    if cut:
        text += f"\n[output cut at {max_bytes} bytes]"
    return text


def parse_status(out, top):
    """``git status --porcelain=v2 --branch -z`` as a dict."""
    result = {"repository": top, "branch": None, "commit": None, "upstream": None,
              "ahead": 0, "behind": 0, "staged": [], "unstaged": [], "untracked": [], "conflicted": []}
    records = out.decode("utf-8", "replace").split("\0")
    i = 0
    while i < len(records):
        rec = records[i]
        i += 1
        if rec.startswith("# branch.head "):
            head = rec[14:]
            result["branch"] = None if head == "(detached)" else head
        elif rec.startswith("# branch.oid "):
            oid = rec[13:]
            result["commit"] = None if oid == "(initial)" else oid
        elif rec.startswith("# branch.upstream "):
            result["upstream"] = rec[18:]
        elif rec.startswith("# branch.ab "):
            ahead, behind = rec[12:].split()
            result["ahead"], result["behind"] = int(ahead), -int(behind)
        elif rec[:2] in ("1 ", "2 "):
            parts = rec.split(" ", 8 if rec[0] == "1" else 9)
            xy, path = parts[1], parts[-1]
            entry = {"path": path}
            if rec[0] == "2":
                entry["from"] = records[i]  # -z: the original path is the next record
                i += 1
            _classify(result, xy, entry)
        elif rec.startswith("u "):
            result["conflicted"].append({"path": rec.split(" ", 10)[-1], "state": rec[2:4]})
        elif rec.startswith("? "):
            result["untracked"].append(rec[2:])
    result["clean"] = not (result["staged"] or result["unstaged"] or result["untracked"] or result["conflicted"])
    return result


_CHANGE = {"M": "modified", "T": "type changed", "A": "added", "D": "deleted", "R": "renamed", "C": "copied"}


def _classify(result, xy, entry):
    index, worktree = xy[0], xy[1]
    if index != ".":
        result["staged"].append(dict(entry, change=_CHANGE.get(index, index)))
    if worktree != ".":
        result["unstaged"].append(dict(entry, change=_CHANGE.get(worktree, worktree)))


class GitLauncher:
    """git under the server's command policy (allow/deny lists, environment filter, sandbox)."""

    def __init__(self, config, sandbox=None):
        self.config = config
        self.sandbox = sandbox
        self._policy = None

    def prepare(self, cwd, argv):
        from bemcp.security import PolicyError, command_policy
        if self._policy is None:
            self._policy = command_policy(self.config, self.sandbox)
        try:
            launch = self._policy.prepare(argv, cwd)
        except PolicyError as exc:
            raise ToolError(f"{exc} (the git plugin runs `git`; --disable-plugin git turns it off)") from None
        env = dict(launch.env, GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", PAGER="cat",
                   GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
        return launch.executable, env

    async def run(self, cwd, args, max_bytes, timeout=TIMEOUT):
        """Run git in ``cwd``; (stdout up to max_bytes, cut?). ToolError when git fails."""
        argv = ["git", *SAFE_OPTIONS, *args]
        executable, env = self.prepare(cwd, argv)
        return await run_git(executable, argv, cwd, env, max_bytes, timeout, self.sandbox)


async def run_git(executable, argv, cwd, env, max_bytes, timeout, sandbox=None):
    """Run ``argv`` (git); (stdout up to max_bytes, cut?). ToolError when git fails.

    The child gets its own process group, killed on timeout or cancellation; with a
    ``sandbox``, its exec helper starts git confined (a failure shows on git's stderr).
    """
    args = argv[len(SAFE_OPTIONS) + 1:]
    keep = ()
    if sandbox is not None:
        from bemcp.security.sandbox import HELPER
        argv, executable, keep = sandbox.command(executable, argv), HELPER, (sandbox.fd,)
    try:
        proc = await asyncio.create_subprocess_exec(
            executable, *argv[1:], cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            pass_fds=keep)
    except FileNotFoundError:
        raise ToolError("git is not installed (no `git` on PATH)") from None
    try:
        out, cut, err = await asyncio.wait_for(_collect(proc, max_bytes), timeout)
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
        raise ToolError(f"git {args[0]} timed out after {timeout:g} s") from None
    except BaseException:
        _kill(proc)
        await proc.wait()
        raise
    code = await proc.wait()
    if code != 0 and not cut:
        message = err.decode("utf-8", "replace").strip() or f"exit status {code}"
        raise ToolError(f"git {args[0]} failed: {message}")
    return out, cut


async def _collect(proc, max_bytes):
    """(stdout up to max_bytes, cut?, stderr up to STDERR_MAX); kills git once stdout is cut."""
    async def drain(stream, limit, stop_when_full):
        kept = bytearray()
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return bytes(kept), False
            if len(kept) + len(chunk) > limit:
                kept += chunk[:limit - len(kept)]
                if stop_when_full:
                    _kill(proc)  # we have all we keep; stop git rather than read the rest
                    return bytes(kept), True
            else:
                kept += chunk

    (out, cut), (err, _) = await asyncio.gather(drain(proc.stdout, max_bytes, True),
                                                drain(proc.stderr, STDERR_MAX, False))
    return out, cut, err


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
