"""JSON Schema from type hints, and the validators built from JSON Schema."""

import dataclasses
import enum
import typing
from typing import Annotated, Any, Literal, Optional, TypedDict, Union

import pytest

from bemcp.schema import compile_arguments_validator, compile_validator, schema_for
from bemcp.tools import parse_docstring


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Movie(TypedDict):
    """A film."""

    title: str
    year: int


class PartialMovie(TypedDict, total=False):
    title: str
    rating: float


@dataclasses.dataclass
class Box:
    width: int
    label: str = "box"
    tags: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Nested:
    box: Box
    color: Color


@pytest.mark.parametrize("hint, schema", [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (type(None), {"type": "null"}),
    (Any, {}),
    (list[str], {"type": "array", "items": {"type": "string"}}),
    (list, {"type": "array"}),
    (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                       "minItems": 2, "maxItems": 2}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (dict, {"type": "object"}),
    (Optional[int], {"type": ["integer", "null"]}),
    (int | None, {"type": ["integer", "null"]}),
    (Union[int, str], {"type": ["integer", "string"]}),
    (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
    (Literal[1, 2], {"enum": [1, 2], "type": "integer"}),
    (Color, {"enum": ["red", "green"], "type": "string"}),
    (Level, {"enum": [1, 2], "type": "integer"}),
    (Annotated[str, "The name."], {"type": "string", "description": "The name."}),
    (Annotated[int, {"minimum": 0, "maximum": 9}], {"type": "integer", "minimum": 0, "maximum": 9}),
    (Optional[list[Color]], {"anyOf": [{"type": "array", "items": {"enum": ["red", "green"], "type": "string"}},
                                        {"type": "null"}]}),
])
def test_schema_for_hints(hint, schema):
    assert schema_for(hint) == schema


def test_typeddict_schema():
    assert schema_for(Movie) == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["title", "year"],
        "description": "A film.",
    }
    partial = schema_for(PartialMovie)
    assert partial["properties"] == {"title": {"type": "string"}, "rating": {"type": "number"}}
    assert "required" not in partial


def test_dataclass_schema():
    schema = schema_for(Box)
    assert schema["type"] == "object"
    assert schema["properties"]["width"] == {"type": "integer"}
    assert schema["properties"]["label"] == {"type": "string", "default": "box"}
    assert schema["required"] == ["width"]
    # The generated dataclass docstring "Box(width: int, ...)" is not a description.
    assert "description" not in schema
    nested = schema_for(Nested)
    assert nested["properties"]["box"]["properties"]["width"] == {"type": "integer"}
    assert nested["properties"]["color"]["enum"] == ["red", "green"]
    assert nested["required"] == ["box", "color"]


@pytest.mark.parametrize("hint", [dict[int, str], object.__class__, complex, typing.Callable[[], int]])
def test_types_json_cannot_carry_are_refused(hint):
    with pytest.raises(TypeError):
        schema_for(hint)


# -- validation ---------------------------------------------------------------------------------

SIGNATURE_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "color": schema_for(Color),
        "maybe": {"type": ["integer", "null"]},
        "box": schema_for(Box),
        "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
        "short": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"},
        "bounded": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
    },
    "required": ["text"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def check():
    return compile_arguments_validator(SIGNATURE_SCHEMA)


def test_valid_arguments_pass(check):
    assert check({"text": "x"}) is None
    assert check({"text": "x", "count": 3, "ratio": 2, "flag": False, "tags": ["a", "b"], "color": "red",
                  "maybe": None, "box": {"width": 2, "tags": [1]}, "scores": {"a": 1},
                  "short": "abc", "bounded": 9}) is None
    assert check({"text": "x", "ratio": 2.5, "maybe": 4}) is None


@pytest.mark.parametrize("args, message", [
    ({}, "text: required argument missing"),
    ({"text": 5}, "text: expected string, got integer"),
    ({"text": "x", "count": "3"}, "count: expected integer, got string"),
    ({"text": "x", "count": True}, "count: expected integer, got boolean"),
    ({"text": "x", "count": 1.5}, "count: expected integer, got number"),
    ({"text": "x", "ratio": "1"}, "ratio: expected number, got string"),
    ({"text": "x", "flag": 1}, "flag: expected boolean, got integer"),
    ({"text": "x", "tags": "a"}, "tags: expected array, got string"),
    ({"text": "x", "tags": ["a", 2]}, "tags[1]: expected string, got integer"),
    ({"text": "x", "color": "blue"}, "color: must be one of 'red', 'green', got 'blue'"),
    ({"text": "x", "maybe": "no"}, "maybe: expected integer or null, got string"),
    ({"text": "x", "box": {}}, "box.width: required argument missing"),
    ({"text": "x", "box": {"width": "2"}}, "box.width: expected integer, got string"),
    ({"text": "x", "box": {"width": 2, "label": None}}, "box.label: expected string, got null"),
    ({"text": "x", "scores": {"a": "1"}}, "scores.a: expected integer, got string"),
    ({"text": "x", "short": "a"}, "short: must be at least 2 characters long"),
    ({"text": "x", "short": "abcde"}, "short: must be at most 4 characters long"),
    ({"text": "x", "short": "AB"}, "short: must match the pattern '^[a-z]+$'"),
    ({"text": "x", "bounded": -1}, "bounded: must be >= 0, got -1"),
    ({"text": "x", "bounded": 10}, "bounded: must be < 10, got 10"),
])
def test_invalid_arguments_name_the_argument_and_the_expectation(check, args, message):
    assert check(args) == message


def test_unexpected_argument_lists_the_allowed_ones():
    check = compile_arguments_validator({"type": "object", "properties": {"a": {"type": "string"},
                                                                         "b": {"type": "integer"}},
                                         "additionalProperties": False})
    assert check({"a": "x", "c": 1}) == "c: unexpected argument (allowed: a, b)"
    open_check = compile_arguments_validator({"type": "object", "properties": {"a": {"type": "string"}}})
    assert open_check({"a": "x", "c": 1}) is None


def test_any_of_and_one_of():
    check = compile_validator({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]})
    assert check("s", "v") is None and check(3, "v") is None
    error = check(-1, "v")
    assert error.startswith("v: matches none of the allowed forms")
    one = compile_validator({"oneOf": [{"type": "number"}, {"type": "integer"}]})
    assert one(1.5, "v") is None
    assert one(1, "v") == "v: matches more than one of the allowed forms"


def test_tuple_and_unique_items():
    check = compile_validator(schema_for(tuple[int, str]))
    assert check([1, "a"], "t") is None
    assert check([1], "t") == "t: needs at least 2 items, got 1"
    assert check([1, 2], "t") == "t[1]: expected string, got integer"
    unique = compile_validator(schema_for(set[int]))
    assert unique([1, 2, 1], "s") == "s: items must be unique, 1 repeats"


def test_const_and_boolean_schemas():
    assert compile_validator({"const": 3})(4, "c") == "c: must be 3"
    assert compile_validator(True)(object(), "x") is None
    assert compile_validator(False)(1, "x") == "x: no value is allowed here"


def test_derived_schemas_accept_values_of_their_own_type():
    # Round trip: a value of the annotated type, as JSON, passes its derived schema.
    cases = [(list[Color], ["red", "green"]), (Movie, {"title": "t", "year": 1999}),
             (Box, {"width": 1, "label": "l", "tags": []}), (dict[str, list[int]], {"a": [1, 2]}),
             (Optional[Literal["x"]], None), (tuple[int, str], [1, "s"])]
    for hint, value in cases:
        assert compile_validator(schema_for(hint))(value, "v") is None, hint


# -- docstrings ------------------------------------------------------------------------------------


def test_google_docstring():
    summary, params = parse_docstring("""Search the files.

    Longer text about searching.

    Args:
        pattern: What to look for.
        limit (int): How many results,
            at most.
        **options: Extra settings.

    Returns:
        The matches.
    """)
    assert summary == "Search the files.\n\nLonger text about searching."
    assert params == {"pattern": "What to look for.", "limit": "How many results, at most.",
                      "options": "Extra settings."}


def test_rest_docstring():
    summary, params = parse_docstring("""Add numbers.

    :param a: The first.
    :param int b: The second.
    :returns: The sum.
    """)
    assert summary == "Add numbers."
    assert params == {"a": "The first.", "b": "The second."}


def test_no_docstring():
    assert parse_docstring(None) == (None, {})
