"""Prompts as the server sees them: arguments from the signature, messages from the return value."""

import inspect
import logging
import re

from ._core import RpcError
from .errors import INVALID_PARAMS
from .tools import Content, Context, parse_docstring, text


def user(content):
    """A user message for a prompt: ``content`` is a string or a content block."""
    return {"role": "user", "content": text(content) if isinstance(content, str) else content}


def assistant(content):
    """An assistant message for a prompt: ``content`` is a string or a content block."""
    return {"role": "assistant", "content": text(content) if isinstance(content, str) else content}


def context_param(fn):
    """The name of ``fn``'s parameter annotated ``Context``, or None."""
    for pname, param in inspect.signature(fn).parameters.items():
        hint = param.annotation
        if hint is Context or hint == "Context" or (isinstance(hint, type) and issubclass(hint, Context)):
            return pname
    return None


async def call(fn, kwargs):
    """Call a sync or async prompt, resource or completion function (a sync one runs on the
    loop, where the watchdog sees it if it blocks: slow work belongs in an async function)."""
    value = fn(**kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


async def complete_values(fn, value, arguments):
    """Run a completion function; the ``completion`` object of completion/complete."""
    values = await call(fn, {"value": value, "arguments": arguments})
    if isinstance(values, dict):
        return values
    values = [str(v) for v in values]
    return {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}


class Prompt:
    """A registered prompt. String arguments, required unless they have a default."""

    def __init__(self, fn, *, name=None, title=None, description=None, completions=None):
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", self.name):
            raise ValueError(f"prompt name {self.name!r}: use 1-128 letters, digits, '_', '-' or '.'")
        self.title = title
        summary, arg_docs = parse_docstring(fn.__doc__)
        self.description = description if description is not None else summary
        if not self.description:
            raise ValueError(f"prompt {self.name!r} needs a description (a docstring or description=)")
        self.log = logging.getLogger(f"bemcp.prompt.{self.name}")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.context_param = context_param(fn)
        self.arguments = []
        for pname, param in inspect.signature(fn).parameters.items():
            if pname == self.context_param or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            arg = {"name": pname}
            if pname in arg_docs:
                arg["description"] = arg_docs[pname]
            arg["required"] = param.default is inspect.Parameter.empty
            self.arguments.append(arg)
        self.completions = dict(completions or {})
        unknown = set(self.completions) - {a["name"] for a in self.arguments}
        if unknown:
            raise ValueError(f"prompt {self.name!r}: completions for unknown arguments {sorted(unknown)}")

    def definition(self):
        entry = {"name": self.name}
        if self.title:
            entry["title"] = self.title
        entry["description"] = self.description
        entry["arguments"] = self.arguments
        return entry

    def bind(self, arguments):
        """The keyword arguments for a prompts/get; -32602 names what is wrong."""
        if arguments is None:
            arguments = {}
        if type(arguments) is not dict:
            raise RpcError(INVALID_PARAMS, f"prompt {self.name!r}: arguments must be an object of strings")
        known = {a["name"]: a for a in self.arguments}
        kwargs = {}
        for name, value in arguments.items():
            if name not in known:
                raise RpcError(INVALID_PARAMS, f"prompt {self.name!r} has no argument {name!r}; "
                                               f"it takes: {', '.join(known) or 'none'}")
            if type(value) is not str:
                raise RpcError(INVALID_PARAMS, f"prompt {self.name!r}: argument {name!r} must be a string")
            kwargs[name] = value
        missing = [n for n, a in known.items() if a["required"] and n not in kwargs]
        if missing:
            raise RpcError(INVALID_PARAMS, f"prompt {self.name!r}: missing required argument"
                                           f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        return kwargs

    def to_result(self, value):
        """Map a prompt's return value onto a GetPromptResult."""
        if isinstance(value, dict) and "messages" in value:
            result = dict(value)   # an explicit result
        else:
            items = value if isinstance(value, (list, tuple)) else [value]
            result = {"messages": [_message(item, self.name) for item in items]}
        result.setdefault("description", self.description)
        return result


def _message(item, name):
    if isinstance(item, str):
        return user(item)
    if isinstance(item, dict) and "role" in item and "content" in item:
        return item
    if isinstance(item, (Content, dict)) and "type" in item:
        return user(item)
    raise TypeError(f"prompt {name!r} returned {type(item).__name__}: return a string, a content "
                    "block, a {'role', 'content'} message, or a list of them")
