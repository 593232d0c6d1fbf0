"""JSON Schema from Python type hints, and validators compiled from JSON Schema.

Derivation covers what tool signatures use: str, int, float, bool, None, list/tuple/set,
dict, Optional/Union, Literal, Enum, TypedDict, dataclasses and ``Annotated``
descriptions. Validation covers the keywords those schemas (and hand-written ones
of the same kind) use; a validator is built once per tool, so a call costs a few
type checks, and its messages name the argument and say what was expected, so a
model can correct its call.
"""

import dataclasses
import enum
import re
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, is_typeddict

_UNION_TYPES = (Union, getattr(types, "UnionType", Union))
_ARRAY_TYPES = (list, tuple, set, frozenset)


def schema_for(tp):
    """The JSON Schema of a type hint. Raises TypeError for types JSON cannot carry."""
    if tp is Any or tp is object:
        return {}
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Annotated:
        schema = dict(schema_for(args[0]))
        for meta in args[1:]:
            if isinstance(meta, str):
                schema["description"] = meta
            elif isinstance(meta, dict):
                schema.update(meta)
        return schema
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if origin in _UNION_TYPES:
        members = [a for a in args if a is not type(None)]
        schemas = [schema_for(a) for a in members]
        if len(members) < len(args):
            schemas.append({"type": "null"})
        simple = [s.get("type") for s in schemas]
        if all(isinstance(t, str) and len(s) == 1 for t, s in zip(simple, schemas)):
            return {"type": simple}
        return {"anyOf": schemas}
    if origin is Literal:
        schema = {"enum": list(args)}
        kinds = {_json_type(a) for a in args}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        schema = {"enum": values}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema
    if tp in _ARRAY_TYPES or origin in _ARRAY_TYPES or origin in (typing.Sequence, _abc("Sequence")):
        schema = {"type": "array"}
        if (origin or tp) is tuple and args and args[-1] is not Ellipsis:
            schema["prefixItems"] = [schema_for(a) for a in args]
            schema["minItems"] = schema["maxItems"] = len(args)
        elif args:
            schema["items"] = schema_for(args[0])
        if (origin or tp) in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if tp is dict or origin is dict or origin in (typing.Mapping, _abc("Mapping")):
        schema = {"type": "object"}
        if args:
            if args[0] is not str:
                raise TypeError(f"dict keys must be str in a tool signature, not {args[0]!r}")
            schema["additionalProperties"] = schema_for(args[1])
        return schema
    if is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return _object_schema({k: schema_for(v) for k, v in hints.items()},
                              [k for k in hints if k in tp.__required_keys__], tp.__doc__)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        props = {}
        required = []
        for f in dataclasses.fields(tp):
            props[f.name] = schema_for(hints[f.name])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING:
                props[f.name].setdefault("default", _jsonable(f.default))
        doc = tp.__doc__ if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "(") else None
        return _object_schema(props, required, doc)
    raise TypeError(f"cannot describe {tp!r} in JSON Schema; annotate with a JSON type or give input_schema")


def _abc(name):
    import collections.abc
    return getattr(collections.abc, name)


def _object_schema(props, required, doc):
    schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if doc and doc.strip():
        schema["description"] = doc.strip().split("\n\n")[0]
    return schema


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def _jsonable(value):
    return value.value if isinstance(value, enum.Enum) else value


# -- validation ------------------------------------------------------------------

_TYPE_CHECKS = {
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}


def describe(value):
    """A JSON type name for a value, for error messages."""
    if value is None:
        return "null"
    t = type(value)
    if t is bool:
        return "boolean"
    if t is int:
        return "integer"
    if t is float:
        return "number"
    if t is str:
        return "string"
    if t is list:
        return "array"
    return "object"


_PY_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
             "null": (type(None),), "array": (list,), "object": (dict,)}
# Keywords that do not constrain a value.
_ANNOTATIONS = frozenset(("type", "description", "title", "default", "examples", "deprecated"))


def _simple_types(schema):
    """The Python types a schema allows if it only constrains the type, else None."""
    if not isinstance(schema, dict) or not schema.keys() <= _ANNOTATIONS or "type" not in schema:
        return None
    kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
    if not all(k in _PY_TYPES for k in kinds):
        return None
    return frozenset(t for k in kinds for t in _PY_TYPES[k])


def compile_arguments_validator(schema):
    """A validator for a tool's arguments object: ``check(args) -> error or None``.

    The dispatcher already knows ``args`` is a dict. Arguments whose schema only
    names a type are checked with one set lookup; the rest use compile_validator.
    """
    if schema.get("type") not in ("object", None) or "anyOf" in schema or "oneOf" in schema \
            or "allOf" in schema or "patternProperties" in schema:
        general = compile_validator(schema)
        return lambda args: general(args, "")
    props = schema.get("properties") or {}
    required = tuple(schema.get("required") or ())
    extra = schema.get("additionalProperties", True)
    extra_check = compile_validator(extra) if isinstance(extra, dict) else None
    simple = {}
    nested = {}
    for key, sub in props.items():
        types = _simple_types(sub)
        if types is not None:
            simple[key] = types
        else:
            nested[key] = compile_validator(sub)
    names = {key: " or ".join([sub["type"]] if isinstance(sub["type"], str) else sub["type"])
             for key, sub in props.items() if key in simple}
    known = ", ".join(props) or "none"

    def check_general(args):
        for key in required:
            if key not in args:
                return f"{key}: required argument missing"
        for key, value in args.items():
            types = simple.get(key)
            if types is not None:
                if type(value) in types:
                    continue
                return f"{key}: expected {names[key]}, got {describe(value)}"
            sub = nested.get(key)
            if sub is None:
                if extra is False:
                    return f"{key}: unexpected argument (allowed: {known})"
                if extra_check is None:
                    continue
                sub = extra_check
            error = sub(value, key)
            if error is not None:
                return error
        return None

    if nested or len(props) > 32:
        return check_general
    return _straight_line(simple, set(required), check_general)


def _straight_line(simple, required, general):
    """A validator with one lookup and one type test per argument, as generated source.

    It only decides valid or not; for an invalid call it defers to ``general``,
    which finds the first problem and words it.
    """
    names = {}
    lines = ["def check(args):", "    seen = 0"]
    for i, (key, allowed) in enumerate(simple.items()):
        names[f"t{i}"] = tuple(allowed)
        lines.append(f"    v = args.get({key!r}, MISSING)")
        lines.append("    if v is not MISSING:")
        if len(allowed) == 1:
            names[f"t{i}"] = next(iter(allowed))
            lines.append(f"        if type(v) is not t{i}:")
        else:
            lines.append(f"        if type(v) not in t{i}:")
        lines.append("            return general(args)")
        lines.append("        seen += 1")
        if key in required:
            lines.append("    else:")
            lines.append("        return general(args)")
    lines.append("    if seen != len(args):")
    lines.append("        return general(args)  # names outside the schema: allowed or not, general decides")
    lines.append("    return None")
    scope = dict(names, MISSING=object(), general=general)
    exec("\n".join(lines), scope)
    return scope["check"]


def compile_validator(schema):
    """A function ``check(value, path) -> error message or None`` for ``schema``."""
    if schema is False:  # before the emptiness test: `not False` is true too
        return lambda value, path: f"{path}: no value is allowed here"
    if schema is True or not schema:
        return _ok
    checks = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        preds = [_TYPE_CHECKS[k] for k in kinds if k in _TYPE_CHECKS]
        expected = " or ".join(kinds)
        if len(preds) == 1:
            pred = preds[0]

            def check_type(value, path, pred=pred, expected=expected):
                if not pred(value):
                    return f"{path}: expected {expected}, got {describe(value)}"
        else:
            def check_type(value, path, preds=preds, expected=expected):
                for pred in preds:
                    if pred(value):
                        return None
                return f"{path}: expected {expected}, got {describe(value)}"
        checks.append(check_type)
    if "enum" in schema:
        allowed = schema["enum"]

        def check_enum(value, path, allowed=allowed):
            if not any(value == a and type(value) is type(a) or
                       (type(value) in (int, float) and type(a) in (int, float) and value == a)
                       for a in allowed):
                return f"{path}: must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        checks.append(check_enum)
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v, path, c=const: None if v == c else f"{path}: must be {c!r}")
    for key, word in (("anyOf", "any"), ("oneOf", "one")):
        if key in schema:
            subs = [compile_validator(s) for s in schema[key]]

            def check_any(value, path, subs=subs, word=word):
                errors = [sub(value, path) for sub in subs]
                passed = errors.count(None)
                if passed == 0:
                    return f"{path}: matches none of the allowed forms ({'; '.join(errors)})"
                if word == "one" and passed > 1:
                    return f"{path}: matches more than one of the allowed forms"
            checks.append(check_any)
    if "allOf" in schema:
        subs = [compile_validator(s) for s in schema["allOf"]]
        checks.append(lambda v, path, subs=subs: next((e for e in (s(v, path) for s in subs) if e), None))
    _compile_string(schema, checks)
    _compile_number(schema, checks)
    _compile_array(schema, checks)
    _compile_object(schema, checks)
    if not checks:
        return _ok
    if len(checks) == 1:
        return checks[0]

    def check_all(value, path, checks=tuple(checks)):
        for check in checks:
            error = check(value, path)
            if error is not None:
                return error
    return check_all


def _ok(value, path):
    return None


def _compile_string(schema, checks):
    lo = schema.get("minLength")
    hi = schema.get("maxLength")
    pattern = schema.get("pattern")
    if lo is None and hi is None and pattern is None:
        return
    rx = re.compile(pattern) if pattern is not None else None

    def check_string(value, path):
        if type(value) is not str:
            return None
        if lo is not None and len(value) < lo:
            return f"{path}: must be at least {lo} characters long"
        if hi is not None and len(value) > hi:
            return f"{path}: must be at most {hi} characters long"
        if rx is not None and not rx.search(value):
            return f"{path}: must match the pattern {pattern!r}"
    checks.append(check_string)


def _compile_number(schema, checks):
    bounds = [(schema.get(k), k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")]
    if all(b is None for b, _ in bounds):
        return
    lo, hi, xlo, xhi = (b for b, _ in bounds)

    def check_number(value, path):
        if type(value) not in (int, float):
            return None
        if lo is not None and value < lo:
            return f"{path}: must be >= {lo}, got {value}"
        if hi is not None and value > hi:
            return f"{path}: must be <= {hi}, got {value}"
        if xlo is not None and value <= xlo:
            return f"{path}: must be > {xlo}, got {value}"
        if xhi is not None and value >= xhi:
            return f"{path}: must be < {xhi}, got {value}"
    checks.append(check_number)


def _compile_array(schema, checks):
    items = schema.get("items")
    prefix = schema.get("prefixItems")
    lo = schema.get("minItems")
    hi = schema.get("maxItems")
    unique = schema.get("uniqueItems")
    if items is None and prefix is None and lo is None and hi is None and not unique:
        return
    item_check = compile_validator(items) if isinstance(items, dict) else None
    prefix_checks = [compile_validator(s) for s in prefix] if prefix else []

    def check_array(value, path):
        if type(value) is not list:
            return None
        if lo is not None and len(value) < lo:
            return f"{path}: needs at least {lo} items, got {len(value)}"
        if hi is not None and len(value) > hi:
            return f"{path}: takes at most {hi} items, got {len(value)}"
        for i, item in enumerate(value):
            check = prefix_checks[i] if i < len(prefix_checks) else item_check
            if check is not None:
                error = check(item, f"{path}[{i}]")
                if error is not None:
                    return error
        if unique:
            seen = []
            for item in value:
                if item in seen:
                    return f"{path}: items must be unique, {item!r} repeats"
                seen.append(item)
    checks.append(check_array)


def _compile_object(schema, checks):
    props = schema.get("properties")
    required = schema.get("required") or ()
    extra = schema.get("additionalProperties", True)
    if props is None and not required and extra is True:
        return
    prop_checks = {k: compile_validator(v) for k, v in (props or {}).items()}
    extra_check = compile_validator(extra) if isinstance(extra, dict) else None
    known = ", ".join(prop_checks) or "none"

    def check_object(value, path):
        if type(value) is not dict:
            return None
        for key in required:
            if key not in value:
                return f"{_join(path, key)}: required argument missing"
        for key, item in value.items():
            check = prop_checks.get(key)
            if check is None:
                if extra is False:
                    return f"{_join(path, key)}: unexpected argument (allowed: {known})"
                check = extra_check
                if check is None:
                    continue
            error = check(item, _join(path, key))
            if error is not None:
                return error
    checks.append(check_object)


def _join(path, key):
    return f"{path}.{key}" if path else key
