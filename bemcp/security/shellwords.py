"""Command strings split into words as a POSIX shell would (quotes, backslashes),
without expanding anything: shell syntax (operators, expansions, globs, ...) is refused
with a message that says what was found and how to proceed. See docs/security.md.
"""

import re

from .errors import PolicyError, ShellSyntaxError

_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_SPECIAL_PARAMS = frozenset("0123456789?#@*!$-")
_OPERATORS = {"|": "a pipe '|'", "||": "'||'", "&": "a background '&'", "&&": "'&&'",
              ";": "a command separator ';'", ";;": "';;'", "(": "a subshell '('", ")": "')'",
              "<": "a redirection '<'", ">": "a redirection '>'", ">>": "a redirection '>>'",
              "<<": "a here-document '<<'", "<&": "a redirection '<&'", ">&": "a redirection '>&'",
              "<>": "a redirection '<>'", ">|": "a redirection '>|'", "&>": "a redirection '&>'",
              "|&": "a pipe '|&'"}
_RESERVED = frozenset(("!", "{", "}", "if", "then", "else", "elif", "fi", "for", "while",
                       "until", "do", "done", "case", "esac", "in", "function", "select",
                       "[[", "]]"))
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def split_command(command):
    """Words of ``command`` as a POSIX shell would split them, without expanding anything.

    Raises ShellSyntaxError for anything a shell would interpret rather than pass on
    (operators, expansions, globs, comments, assignments, compound commands), and
    PolicyError for an unterminated quote or an empty command.
    """
    words = []
    raw_starts = []
    cur = []
    in_word = False
    i = 0
    n = len(command)
    while i < n:
        c = command[i]
        if c == " " or c == "\t":
            if in_word:
                words.append("".join(cur))
                cur = []
                in_word = False
            i += 1
            continue
        if not in_word:
            raw_starts.append(i)
            if c == "#":
                raise ShellSyntaxError("a comment '#'", i)
            if c == "~":
                raise ShellSyntaxError("tilde expansion '~'", i)
        if c == "\n" or c == "\r":
            raise ShellSyntaxError("a newline (a second command)", i)
        if c == "\\":
            if i + 1 < n:
                if command[i + 1] == "\n":   # line continuation
                    i += 2
                    continue
                cur.append(command[i + 1])
                i += 2
            else:
                cur.append("\\")
                i += 1
            in_word = True
            continue
        if c == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise PolicyError(f"unterminated single quote at position {i}")
            cur.append(command[i + 1:end])
            i = end + 1
            in_word = True
            continue
        if c == '"':
            i = _double_quoted(command, i + 1, cur)
            in_word = True
            continue
        if c in "|&;<>()":
            if command[i:i + 2] in ("<(", ">("):
                raise ShellSyntaxError(f"process substitution '{command[i:i + 2]}...)'", i)
            op = command[i:i + 2] if command[i:i + 2] in _OPERATORS else c
            raise ShellSyntaxError(_OPERATORS.get(op, f"the operator {op!r}"), i)
        if c == "$":
            what = _expansion(command, i)
            if what:
                raise ShellSyntaxError(what, i)
        elif c == "`":
            raise ShellSyntaxError("command substitution with backticks", i)
        elif c == "*" or c == "?":
            raise ShellSyntaxError(f"a glob pattern {c!r} (quote it to pass it literally)", i)
        elif c == "[" and _closes_bracket(command, i):
            raise ShellSyntaxError("a glob pattern '[...]' (quote it to pass it literally)", i)
        cur.append(c)
        in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    if not words:
        raise PolicyError("the command is empty")
    first_raw = command[raw_starts[0]:]
    if _ASSIGNMENT.match(first_raw):
        raise ShellSyntaxError("a variable assignment before the command (use the env argument)",
                               raw_starts[0])
    if words[0] in _RESERVED and not first_raw[:1] in "'\"\\":
        raise ShellSyntaxError(f"the shell keyword {words[0]!r}", raw_starts[0])
    return words


def _double_quoted(command, i, cur):
    """Append the text of a double-quoted run starting at ``i``; the index after it."""
    n = len(command)
    start = i - 1
    while i < n:
        c = command[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and command[i + 1] in '$`"\\\n':
            if command[i + 1] != "\n":
                cur.append(command[i + 1])
            i += 2
            continue
        if c == "$":
            what = _expansion(command, i)
            if what:
                raise ShellSyntaxError(what + " inside double quotes", i)
        elif c == "`":
            raise ShellSyntaxError("command substitution with backticks", i)
        cur.append(c)
        i += 1
    raise PolicyError(f"unterminated double quote at position {start}")


def _expansion(command, i):
    """What ``$`` at ``i`` would expand, or "" if the shell keeps it literally."""
    nxt = command[i + 1:i + 2]
    if nxt == "(":
        return "arithmetic expansion '$((...))'" if command[i + 2:i + 3] == "(" else \
            "command substitution '$(...)'"
    if nxt == "{" or (nxt and (nxt in _NAME_START or nxt in _SPECIAL_PARAMS)):
        return "a variable expansion '$...' (use a literal value, or the env argument)"
    if nxt == "'" or nxt == '"':
        return "bash quoting '$'...''"
    return ""


def _closes_bracket(command, i):
    """Whether the '[' at ``i`` starts a bracket expression (a ']' later in the same word)."""
    for c in command[i + 1:]:
        if c in " \t\n":
            return False
        if c == "]":
            return True
    return False


def shell_syntax_message(exc, allowlist, shell_available):
    """The isError text for a command string refused for its shell syntax."""
    hint = ("" if shell_available else
            " This server has an allowlist, so no shell is available." if allowlist else
            " A shell runs command strings only when the server is started with --shell.")
    return (f"Not run: the command string contains shell syntax ({exc.what} at character "
            f"{exc.position}), and this server runs commands without a shell. Pass the "
            f"program and its arguments as a list, e.g. [\"grep\", \"-rn\", \"TODO\", \"src\"], "
            f"run the parts of a pipeline or sequence as separate commands, and put the "
            f"literal value where a variable or glob was.{hint}")
