"""JSON Schema -> Gemini's function-parameter subset (ccproxy.translate.schema).

The tables say what each JSON Schema construct becomes. Every result, and every tool
schema captured from Claude Code in tests/fixtures/claude-code/requests, is also
checked against what Gemini accepts (`geminiProblems`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ccproxy.translate.schema import (
    MAX_DEPTH,
    MAX_REF_DEPTH,
    GeminiSchemas,
    SchemaBudget,
    SchemaTooComplex,
    geminiSchema,
)
from tests.support.fixtures import capturedBodies

# Every keyword Gemini's Schema takes that geminiSchema may emit.
GEMINI_KEYWORDS = {
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "items",
    "properties",
    "required",
    "anyOf",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
}
GEMINI_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
GEMINI_FORMATS = {
    "string": {"date-time", "enum"},
    "number": {"float", "double"},
    "integer": {"int32", "int64"},
}
# JSON Schema keywords seen in real tool schemas that Gemini refuses.
FORBIDDEN = {
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$comment",
    "definitions",
    "additionalProperties",
    "propertyNames",
    "patternProperties",
    "unevaluatedProperties",
    "dependentRequired",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "const",
    "default",
    "examples",
    "title",
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
}


def geminiProblems(node: Any, path: str = "parameters") -> Iterator[str]:
    """Every way `node` breaks Gemini's rules, as `path: problem`."""
    if not isinstance(node, dict):
        yield f"{path}: not an object"
        return
    for key in node:
        if key not in GEMINI_KEYWORDS:
            yield f"{path}: keyword {key!r}"
    if "anyOf" in node:
        if set(node) != {"anyOf"}:
            yield f"{path}: anyOf with siblings {sorted(set(node) - {'anyOf'})}"
        if len(node["anyOf"]) < 2:
            yield f"{path}: anyOf with fewer than two branches"
        for i, branch in enumerate(node["anyOf"]):
            yield from geminiProblems(branch, f"{path}.anyOf[{i}]")
        return
    kind = node.get("type")
    if not isinstance(kind, str) or kind not in GEMINI_TYPES:
        yield f"{path}: type {kind!r}"
        kind = None
    if "nullable" in node and node["nullable"] is not True:
        yield f"{path}: nullable {node['nullable']!r}"
    if "enum" in node:
        values = node["enum"]
        if kind != "string" or not values or not all(isinstance(v, str) for v in values):
            yield f"{path}: enum {values!r} on {kind!r}"
    if "format" in node and node["format"] not in GEMINI_FORMATS.get(kind, ()):
        yield f"{path}: format {node['format']!r} on {kind!r}"
    if kind == "array":
        if "items" not in node:
            yield f"{path}: array without items"
        else:
            yield from geminiProblems(node["items"], f"{path}.items")
    elif "items" in node:
        yield f"{path}: items on {kind!r}"
    if kind == "object":
        properties = node.get("properties", {})
        for name, sub in properties.items():
            yield from geminiProblems(sub, f"{path}.properties[{name}]")
        for name in node.get("required", []):
            if name not in properties:
                yield f"{path}: required {name!r} is not a property"
    elif "properties" in node or "required" in node:
        yield f"{path}: properties/required on {kind!r}"


def keywords(node: Any) -> Iterator[str]:
    """Every keyword in a schema tree (property names are not keywords)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    yield from keywords(sub)
            else:
                yield from keywords(value)
    elif isinstance(node, list):
        for value in node:
            yield from keywords(value)


def obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **extra}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = obj({"n": schema})
    return schema


S = {"type": "string"}
N = {"type": "integer"}

DROPPED_CASES = [
    pytest.param(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:tool",
            "$comment": "c",
            "type": "object",
            "properties": {"a": S},
            "additionalProperties": False,
            "unevaluatedProperties": False,
            "dependentRequired": {"a": ["b"]},
            "if": {"required": ["a"]},
            "then": {"required": ["b"]},
            "else": {},
            "not": {"required": ["c"]},
            "minProperties": 1,
        },
        obj({"a": S}, minProperties=1),
        id="top-level-json-schema-keywords",
    ),
    pytest.param(
        obj(
            {
                "m": {
                    "type": "object",
                    "propertyNames": {"type": "string"},
                    "additionalProperties": {"type": "string"},
                    "patternProperties": {"^x": S},
                }
            }
        ),
        obj({"m": {"type": "object"}}),
        id="map-object-keeps-type-object",
    ),
    pytest.param(
        obj(
            {
                "a": {
                    "type": "string",
                    "default": "x",
                    "examples": ["x"],
                    "readOnly": True,
                    "deprecated": True,
                    "contentMediaType": "text/plain",
                    "x-vendor": 1,
                },
                "n": {"type": "number", "multipleOf": 2},
                "l": {"type": "array", "items": S, "uniqueItems": True, "contains": S},
            }
        ),
        obj({"a": S, "n": {"type": "number"}, "l": {"type": "array", "items": S}}),
        id="validation-and-annotation-keywords",
    ),
    pytest.param(
        obj(
            {
                "a": {"type": "string", "title": "The A"},
                "b": {**S, "title": "T", "description": "D"},
            }
        ),
        obj({"a": {**S, "description": "The A"}, "b": {**S, "description": "D"}}),
        id="title-only-when-no-description",
    ),
    pytest.param(
        obj(
            {
                "title": S,
                "description": S,
                "pattern": S,
                "$schema": S,
                "default": S,
                "additionalProperties": S,
            },
            required=["title", "$schema"],
        ),
        obj(
            {
                "title": S,
                "description": S,
                "pattern": S,
                "$schema": S,
                "default": S,
                "additionalProperties": S,
            },
            required=["title", "$schema"],
        ),
        id="properties-named-like-keywords-survive",
    ),
    pytest.param(
        obj(
            {
                "s": {"type": "string", "minLength": 1, "maxLength": 9, "pattern": "^a"},
                "a": {"type": "array", "items": S, "minItems": 1, "maxItems": 3},
                "o": obj({"x": S}, minProperties=1, maxProperties=2),
                "n": {"type": "number", "minimum": -1.5, "maximum": 2},
                "bad": {"type": "string", "minLength": -1, "maxLength": True, "pattern": 3},
            }
        ),
        obj(
            {
                "s": {"type": "string", "minLength": 1, "maxLength": 9, "pattern": "^a"},
                "a": {"type": "array", "items": S, "minItems": 1, "maxItems": 3},
                "o": obj({"x": S}, minProperties=1, maxProperties=2),
                "n": {"type": "number", "minimum": -1.5, "maximum": 2},
                "bad": S,
            }
        ),
        id="kept-constraints-and-malformed-ones-dropped",
    ),
]


@pytest.mark.parametrize(("schema", "expected"), DROPPED_CASES)
def test_keywords(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(schema) == expected


ENUM_CASES = [
    pytest.param({"type": "string", "const": "x"}, {"type": "string", "enum": ["x"]}, id="const"),
    pytest.param({"const": "x"}, {"type": "string", "enum": ["x"]}, id="const-without-type"),
    pytest.param(
        {"type": "string", "enum": ["a", "b"], "const": "b"},
        {"type": "string", "enum": ["b"]},
        id="const-and-enum-intersect",
    ),
    pytest.param(
        {"type": ["string", "null"], "enum": ["a", None]},
        {"type": "string", "enum": ["a"], "nullable": True},
        id="null-in-enum-is-nullable",
    ),
    pytest.param({"enum": ["a", "b"]}, {"type": "string", "enum": ["a", "b"]}, id="typed-string"),
    pytest.param(
        {"type": "string", "enum": ["a", 1, True]},
        {"type": "string", "enum": ["a"]},
        id="non-strings-never-match-a-string",
    ),
    pytest.param(
        {"type": "integer", "enum": [1, 2], "description": "Level."},
        {"type": "integer", "description": "Level.\n\nAllowed values: 1, 2."},
        id="integer-enum-becomes-description",
    ),
    pytest.param(
        {"enum": [1, 2.5]},
        {"type": "number", "description": "Allowed values: 1, 2.5."},
        id="number-enum-infers-number",
    ),
    pytest.param(
        {"enum": [True]},
        {"type": "boolean", "description": "Allowed values: true."},
        id="boolean-enum",
    ),
    pytest.param(
        {"type": "integer", "const": 0},
        {"type": "integer", "description": "Allowed values: 0."},
        id="integer-const",
    ),
    pytest.param({"const": None}, {"type": "string", "nullable": True}, id="const-null"),
    pytest.param({"type": "string", "enum": []}, S, id="empty-enum-ignored"),
    pytest.param(
        {"type": "integer", "enum": ["1", "2"]},
        {"type": "integer", "description": 'Allowed values: "1", "2".'},
        id="string-values-on-an-integer",
    ),
]


@pytest.mark.parametrize(("prop", "expected"), ENUM_CASES)
def test_enum_and_const(prop: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(obj({"p": prop})) == obj({"p": expected})


FORMAT_CASES = [
    pytest.param({"type": "string", "format": "date-time"}, True, id="string-date-time"),
    pytest.param({"type": "string", "format": "enum", "enum": ["a"]}, True, id="string-enum"),
    pytest.param({"type": "string", "format": "uri"}, False, id="string-uri"),
    pytest.param({"type": "string", "format": "email"}, False, id="string-email"),
    pytest.param({"type": "string", "format": "date"}, False, id="string-date"),
    pytest.param({"type": "string", "format": "uuid"}, False, id="string-uuid"),
    pytest.param({"type": "number", "format": "double"}, True, id="number-double"),
    pytest.param({"type": "number", "format": "float"}, True, id="number-float"),
    pytest.param({"type": "integer", "format": "int64"}, True, id="integer-int64"),
    pytest.param({"type": "integer", "format": "int32"}, True, id="integer-int32"),
    pytest.param({"type": "integer", "format": "date-time"}, False, id="integer-date-time"),
    pytest.param({"type": "integer", "format": "uint8"}, False, id="integer-uint8"),
    pytest.param({"type": "boolean", "format": "enum"}, False, id="boolean"),
]


@pytest.mark.parametrize(("prop", "kept"), FORMAT_CASES)
def test_format(prop: dict[str, Any], kept: bool) -> None:
    out = geminiSchema(obj({"p": prop}))["properties"]["p"]
    assert ("format" in out) is kept
    if kept:
        assert out["format"] == prop["format"]


BOUND_CASES = [
    pytest.param({"type": "integer", "exclusiveMinimum": 0}, {"minimum": 1}, id="int-min"),
    pytest.param({"type": "integer", "exclusiveMinimum": 0.5}, {"minimum": 1}, id="int-min-frac"),
    pytest.param({"type": "integer", "exclusiveMaximum": 10}, {"maximum": 9}, id="int-max"),
    pytest.param({"type": "integer", "exclusiveMaximum": 9.5}, {"maximum": 9}, id="int-max-frac"),
    pytest.param({"type": "number", "exclusiveMinimum": 0}, {"minimum": 0}, id="number-min"),
    pytest.param({"type": "number", "exclusiveMaximum": 1.5}, {"maximum": 1.5}, id="number-max"),
    pytest.param(
        {"type": "integer", "minimum": 5, "exclusiveMinimum": 0},
        {"minimum": 5},
        id="tighter-minimum-wins",
    ),
    pytest.param(
        {"type": "integer", "minimum": 0, "exclusiveMinimum": 3, "maximum": 9007199254740991},
        {"minimum": 4, "maximum": 9007199254740991},
        id="tighter-exclusive-wins",
    ),
    pytest.param(
        {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
        {"minimum": 1},
        id="draft-04-flag",
    ),
    pytest.param(
        {"type": "integer", "exclusiveMinimum": False, "minimum": 0},
        {"minimum": 0},
        id="draft-04-false-flag",
    ),
    pytest.param({"exclusiveMinimum": 0}, {"type": "number", "minimum": 0}, id="infers-number"),
    pytest.param({"type": "integer", "minimum": True}, {}, id="boolean-is-no-bound"),
]


@pytest.mark.parametrize(("prop", "bounds"), BOUND_CASES)
def test_exclusive_bounds(prop: dict[str, Any], bounds: dict[str, Any]) -> None:
    expected = {"type": prop.get("type", "number"), **bounds}
    assert geminiSchema(obj({"p": prop}))["properties"]["p"] == expected


TYPE_CASES = [
    pytest.param({"type": ["string", "null"]}, {"type": "string", "nullable": True}, id="nullable"),
    pytest.param(
        {"type": ["null", "integer"]}, {"type": "integer", "nullable": True}, id="null-first"
    ),
    pytest.param({"type": "null"}, {"type": "string", "nullable": True}, id="null-string"),
    pytest.param({"type": ["null"]}, {"type": "string", "nullable": True}, id="null-list"),
    pytest.param(
        {"type": "string", "nullable": True}, {"type": "string", "nullable": True}, id="openapi"
    ),
    pytest.param({"type": ["string"]}, S, id="one-item-list"),
    pytest.param({"type": ["string", "string"]}, S, id="duplicates"),
    pytest.param({"type": "any"}, S, id="unknown-type-name"),
    pytest.param(
        {"type": ["object", "null"], "properties": {"a": S}, "required": ["a"]},
        {"type": "object", "nullable": True, "properties": {"a": S}, "required": ["a"]},
        id="nullable-object",
    ),
    pytest.param(
        {
            "type": ["string", "array"],
            "description": "One or many.",
            "items": S,
            "maxItems": 3,
            "maxLength": 5,
        },
        {
            "anyOf": [
                {"type": "string", "description": "One or many.", "maxLength": 5},
                {"type": "array", "description": "One or many.", "items": S, "maxItems": 3},
            ]
        },
        id="several-types-split-their-keywords",
    ),
    pytest.param(
        {"type": ["integer", "boolean", "null"]},
        {
            "anyOf": [
                {"type": "integer", "nullable": True},
                {"type": "boolean", "nullable": True},
            ]
        },
        id="several-types-and-null",
    ),
    pytest.param(
        {"type": ["string", "integer"], "enum": ["a", 1]},
        {
            "anyOf": [
                {"type": "string", "enum": ["a"]},
                {"type": "integer", "description": "Allowed values: 1."},
            ]
        },
        id="mixed-enum-split-by-type",
    ),
    pytest.param(
        {"type": ["string", "object"], "enum": ["a"]},
        {"type": "string", "enum": ["a"]},
        id="branch-no-value-fits-is-dropped",
    ),
    pytest.param({}, S, id="no-type-is-string"),
    pytest.param({"description": "Anything."}, {**S, "description": "Anything."}, id="any"),
    pytest.param({"properties": {"a": S}}, obj({"a": S}), id="infer-object"),
    pytest.param({"items": N}, {"type": "array", "items": N}, id="infer-array"),
    pytest.param({"maxLength": 3}, {"type": "string", "maxLength": 3}, id="infer-string"),
    pytest.param({"maximum": 3}, {"type": "number", "maximum": 3}, id="infer-number"),
    pytest.param(
        {"type": "string", "properties": {"a": S}, "items": S, "minimum": 1},
        S,
        id="keywords-of-other-types-dropped",
    ),
]


@pytest.mark.parametrize(("prop", "expected"), TYPE_CASES)
def test_types(prop: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(obj({"p": prop})) == obj({"p": expected})


OBJECT_CASES = [
    pytest.param(
        obj({"a": S}, required=["a", "ghost", "a"]),
        obj({"a": S}, required=["a"]),
        id="required-only-existing-once",
    ),
    pytest.param(
        {"type": "object", "required": ["a"]},
        {"type": "object"},
        id="required-without-properties",
    ),
    pytest.param(obj({}), obj({}), id="empty-properties-kept"),
    pytest.param(
        {"type": "object", "properties": {}, "additionalProperties": False, "required": []},
        obj({}),
        id="no-arguments-tool",
    ),
    pytest.param(
        obj({"a": {"type": "object"}}),
        obj({"a": {"type": "object"}}),
        id="object-without-properties-stays-object",
    ),
    pytest.param(
        obj({"a": True, "b": False, "c": S}, required=["a", "b", "c"]),
        obj({"a": S, "c": S}, required=["a", "c"]),
        id="boolean-subschemas",
    ),
    pytest.param(
        obj({"a": obj({"b": obj({"c": {"type": ["integer", "null"]}}, required=["c", "x"])})}),
        obj({"a": obj({"b": obj({"c": {"type": "integer", "nullable": True}}, required=["c"])})}),
        id="nested-objects",
    ),
]


@pytest.mark.parametrize(("schema", "expected"), OBJECT_CASES)
def test_objects(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(schema) == expected


ARRAY_CASES = [
    pytest.param({"type": "array"}, {"type": "array", "items": S}, id="no-items"),
    pytest.param({"type": "array", "items": {}}, {"type": "array", "items": S}, id="empty-items"),
    pytest.param({"type": "array", "items": True}, {"type": "array", "items": S}, id="true-items"),
    pytest.param(
        {"type": "array", "items": {"type": "array", "items": {"type": ["number", "null"]}}},
        {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number", "nullable": True}},
        },
        id="nested",
    ),
    pytest.param(
        {"type": "array", "items": [S, N]},
        {"type": "array", "items": {"anyOf": [S, N]}},
        id="tuple-list",
    ),
    pytest.param({"type": "array", "items": [N]}, {"type": "array", "items": N}, id="tuple-of-one"),
    pytest.param(
        {"type": "array", "items": [S, S]},
        {"type": "array", "items": S},
        id="tuple-same-types",
    ),
    pytest.param(
        {"type": "array", "prefixItems": [S], "items": N},
        {"type": "array", "items": {"anyOf": [S, N]}},
        id="prefix-items-and-rest",
    ),
    pytest.param(
        {"type": "array", "prefixItems": [S, {"type": "boolean"}], "items": False},
        {"type": "array", "items": {"anyOf": [S, {"type": "boolean"}]}},
        id="prefix-items-closed",
    ),
    pytest.param(
        {"type": "array", "items": [S], "additionalItems": N},
        {"type": "array", "items": {"anyOf": [S, N]}},
        id="draft-07-additional-items",
    ),
]


@pytest.mark.parametrize(("prop", "expected"), ARRAY_CASES)
def test_arrays(prop: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(obj({"p": prop})) == obj({"p": expected})


NODE = obj({"v": S, "next": {"$ref": "#/$defs/Node"}})

REF_CASES = [
    pytest.param(
        obj({"a": {"$ref": "#/$defs/A"}}, **{"$defs": {"A": obj({"x": N}, required=["x"])}}),
        obj({"a": obj({"x": N}, required=["x"])}),
        id="defs",
    ),
    pytest.param(
        obj({"a": {"$ref": "#/definitions/A"}}, definitions={"A": {"type": "string"}}),
        obj({"a": S}),
        id="definitions",
    ),
    pytest.param(
        obj(
            {"a": {"$ref": "#/$defs/A", "description": "Here."}},
            **{"$defs": {"A": {"type": "string", "description": "There."}}},
        ),
        obj({"a": {**S, "description": "Here."}}),
        id="sibling-description-wins",
    ),
    pytest.param(
        obj({"a": {"$ref": "#/$defs/A"}}, **{"$defs": {"A": {"$ref": "#/$defs/B"}, "B": N}}),
        obj({"a": N}),
        id="chain",
    ),
    pytest.param(
        obj({"a": {"$ref": "#/$defs/a~1b%20c"}}, **{"$defs": {"a/b c": N}}),
        obj({"a": N}),
        id="escaped-pointer",
    ),
    pytest.param(
        obj({"a": {"$ref": "#/properties/b"}, "b": N}),
        obj({"a": N, "b": N}),
        id="pointer-into-properties",
    ),
    pytest.param(
        obj({"a": {"$ref": "#/$defs/Missing", "description": "Gone."}}),
        obj({"a": {"type": "object", "description": "Gone."}}),
        id="unresolvable",
    ),
    pytest.param(
        obj({"a": {"$ref": "https://example.com/schema.json"}}),
        obj({"a": {"type": "object"}}),
        id="remote",
    ),
    pytest.param(
        obj({"a": {"$ref": "#anchor"}}),
        obj({"a": {"type": "object"}}),
        id="anchor",
    ),
    pytest.param(
        obj({"head": {"$ref": "#/$defs/Node"}}, **{"$defs": {"Node": NODE}}),
        obj({"head": obj({"v": S, "next": {"type": "object"}})}),
        id="recursive",
    ),
    pytest.param(
        obj({"self": {"$ref": "#"}, "v": S}),
        obj({"self": obj({"self": {"type": "object"}, "v": S}), "v": S}),
        id="root-recursion",
    ),
]


@pytest.mark.parametrize(("schema", "expected"), REF_CASES)
def test_refs(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(schema) == expected


def test_ref_chain_is_bounded() -> None:
    defs = {f"D{i}": {"$ref": f"#/$defs/D{i + 1}"} for i in range(MAX_REF_DEPTH + 5)}
    defs[f"D{MAX_REF_DEPTH + 5}"] = N
    short = {f"D{i}": {"$ref": f"#/$defs/D{i + 1}"} for i in range(MAX_REF_DEPTH - 1)}
    short[f"D{MAX_REF_DEPTH - 1}"] = N
    assert geminiSchema(obj({"a": {"$ref": "#/$defs/D0"}}, **{"$defs": short})) == obj({"a": N})
    out = geminiSchema(obj({"a": {"$ref": "#/$defs/D0"}}, **{"$defs": defs}))
    assert out == obj({"a": {"type": "object"}})


COMBINER_CASES = [
    pytest.param(
        {
            "allOf": [
                obj({"a": S}, required=["a"]),
                obj({"b": N}, required=["b", "a"]),
            ]
        },
        obj({"a": S, "b": N}, required=["a", "b"]),
        id="allOf-objects-union",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {"a": {"type": "string", "maxLength": 9}},
            "allOf": [{"properties": {"a": {"minLength": 2, "maxLength": 5}}}],
        },
        obj({"a": {"type": "string", "minLength": 2, "maxLength": 5}}),
        id="allOf-same-property-merged",
    ),
    pytest.param(
        obj({"s": {"type": "string", "allOf": [{"pattern": "^a"}, {"pattern": "b$"}]}}),
        obj({"s": {"type": "string", "pattern": "^a"}}),
        id="allOf-first-pattern",
    ),
    pytest.param(
        obj(
            {"n": {"allOf": [{"type": "number", "minimum": 1}, {"type": "integer", "maximum": 5}]}}
        ),
        obj({"n": {"type": "integer", "minimum": 1, "maximum": 5}}),
        id="allOf-number-and-integer",
    ),
    pytest.param(
        obj({"n": {"allOf": [{"type": ["string", "null"]}, {"maxLength": 4}]}}),
        obj({"n": {"type": "string", "nullable": True, "maxLength": 4}}),
        id="allOf-keeps-nullable",
    ),
    pytest.param(
        obj({"n": {"allOf": [{"type": ["string", "null"]}, {"type": "string"}]}}),
        obj({"n": S}),
        id="allOf-one-side-not-nullable",
    ),
    pytest.param(
        obj({"a": {"allOf": [{"$ref": "#/$defs/A"}], "description": "A."}}, **{"$defs": {"A": N}}),
        obj({"a": {**N, "description": "A."}}),
        id="allOf-wrapping-a-ref",
    ),
    pytest.param(
        obj({"e": {"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["b", "c", "d"]}]}}),
        obj({"e": {"type": "string", "enum": ["b", "c"]}}),
        id="allOf-enums-intersect",
    ),
    pytest.param(
        obj({"u": {"oneOf": [S, obj({"x": N})]}}),
        obj({"u": {"anyOf": [S, obj({"x": N})]}}),
        id="oneOf-is-anyOf",
    ),
    pytest.param(
        obj({"u": {"anyOf": [S, {"type": "null"}], "description": "Maybe."}}),
        obj({"u": {"type": "string", "description": "Maybe.", "nullable": True}}),
        id="anyOf-with-null-is-nullable",
    ),
    pytest.param(
        obj({"u": {"anyOf": [S, N, {"type": "null"}], "description": "D."}}),
        obj(
            {
                "u": {
                    "anyOf": [
                        {"type": "string", "description": "D.", "nullable": True},
                        {"type": "integer", "description": "D.", "nullable": True},
                    ]
                }
            }
        ),
        id="anyOf-null-and-description-into-branches",
    ),
    pytest.param(
        obj({"u": {"type": "object", "properties": {"a": S}, "anyOf": [{"required": ["a"]}, {}]}}),
        obj({"u": obj({"a": S})}),
        id="anyOf-with-anything-branch-is-no-op",
    ),
    pytest.param(
        obj({"u": {"anyOf": [S, {"type": "string", "title": "x"}, {"type": "string"}]}}),
        obj({"u": {"anyOf": [S, {"type": "string", "description": "x"}]}}),
        id="anyOf-duplicate-branches",
    ),
    pytest.param(
        obj({"u": {"anyOf": [{"anyOf": [S, N]}, {"type": "boolean"}]}}),
        obj({"u": {"anyOf": [S, N, {"type": "boolean"}]}}),
        id="anyOf-nested-flattened",
    ),
    pytest.param(
        obj(
            {
                "u": {
                    "type": "object",
                    "properties": {"a": S, "b": S},
                    "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
                }
            }
        ),
        obj(
            {
                "u": {
                    "anyOf": [
                        obj({"a": S, "b": S}, required=["a"]),
                        obj({"a": S, "b": S}, required=["b"]),
                    ]
                }
            }
        ),
        id="anyOf-siblings-go-into-branches",
    ),
    pytest.param(
        obj({"u": {"type": "string", "anyOf": [{"maxLength": 3}]}}),
        obj({"u": {"type": "string", "maxLength": 3}}),
        id="anyOf-single-branch-merged",
    ),
    pytest.param(
        obj({"u": {"anyOf": [{"type": "null"}]}}),
        obj({"u": {"type": "string", "nullable": True}}),
        id="anyOf-only-null",
    ),
    pytest.param(
        obj({"u": {"anyOf": [S, N], "oneOf": [S, {"type": "boolean"}]}}),
        obj({"u": {"anyOf": [S, N]}}),
        id="anyOf-and-oneOf-first-kept",
    ),
]


@pytest.mark.parametrize(("schema", "expected"), COMBINER_CASES)
def test_combiners(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert geminiSchema(schema) == expected


ROOT_CASES = [
    pytest.param({}, obj({}), id="empty"),
    pytest.param({"type": "string"}, obj({}), id="not-an-object"),
    pytest.param([], obj({}), id="not-a-dict"),
    pytest.param(
        {"type": ["object", "null"], "properties": {"a": S}}, obj({"a": S}), id="nullable"
    ),
    pytest.param({"properties": {"a": S}}, obj({"a": S}), id="untyped"),
    pytest.param(
        {
            "type": "object",
            "description": "Pick one.",
            "properties": {"id": S},
            "oneOf": [
                {"properties": {"a": S}, "required": ["id", "a"]},
                {"properties": {"b": N}, "required": ["id", "b"]},
            ],
        },
        obj({"id": S, "a": S, "b": N}, description="Pick one.", required=["id"]),
        id="top-level-oneOf-becomes-one-object",
    ),
]


@pytest.mark.parametrize(("schema", "expected"), ROOT_CASES)
def test_root_is_an_object(schema: Any, expected: dict[str, Any]) -> None:
    assert geminiSchema(schema) == expected


def test_depth_is_bounded() -> None:
    out = geminiSchema(nested(MAX_DEPTH + 50))
    depth, node = 0, out
    while "properties" in node:
        node, depth = node["properties"]["n"], depth + 1
    assert node == {"type": "object"}
    assert depth == MAX_DEPTH + 1
    assert geminiSchema(nested(MAX_DEPTH)) == nested(MAX_DEPTH)


def referenceBomb(fanOut: int, levels: int = 8) -> dict[str, Any]:
    """Each definition uses the next one `fanOut` times: fanOut**levels nodes inlined."""
    defs = {
        f"D{i}": obj({f"p{k}": {"$ref": f"#/$defs/D{i + 1}"} for k in range(fanOut)})
        for i in range(levels)
    }
    defs[f"D{levels}"] = S
    return obj({"root": {"$ref": "#/$defs/D0"}}, **{"$defs": defs})


def test_reference_bomb_is_refused() -> None:
    # 10**8 nodes if fully inlined: it used to be cut to 20,000 nodes per tool, which
    # left a request of many such tools free to take minutes.
    with pytest.raises(SchemaTooComplex) as caught:
        geminiSchema(referenceBomb(10))
    message = str(caught.value)
    assert "too large or complex for this upstream's schema mode (gemini)" in message
    assert "over 100000 steps" in message and "MAX_SCHEMA_STEPS" in message


def _described(size: int) -> dict[str, Any]:
    return {"type": "string", "description": "d" * size}


# Schemas that cost far more to reduce than their size, each refused by a budget of
# BUDGET steps, beside a plain schema of about the same size that fits in it.
BUDGET = 5000
TOO_COMPLEX = [
    pytest.param(referenceBomb(4), id="reference-fan-out"),
    pytest.param(
        obj(
            {f"p{i}": {"$ref": "#/$defs/Long"} for i in range(100)},
            **{"$defs": {"Long": _described(64 * 100)}},
        ),
        id="long-text-inlined-many-times",
    ),
    pytest.param(
        obj(
            {
                "p": {
                    **obj({f"q{i}": S for i in range(80)}),
                    "anyOf": [obj({}, minProperties=i) for i in range(80)],
                }
            }
        ),
        id="keywords-shared-by-many-branches",
    ),
    pytest.param(
        obj({f"p{i}": {"$ref": "#/$defs/E"} for i in range(100)})
        | {"$defs": {"E": {"type": "string", "enum": [f"v{k}" for k in range(60)]}}},
        id="enum-inlined-many-times",
    ),
]


@pytest.mark.parametrize("schema", TOO_COMPLEX)
def test_budget_refuses_what_costs_more_than_its_size(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaTooComplex):
        geminiSchema(schema, SchemaBudget(BUDGET))
    plain = obj({f"p{i}": _described(20) for i in range(len(json.dumps(schema)) // 60)})
    assert len(json.dumps(plain)) >= len(json.dumps(schema))
    geminiSchema(plain, SchemaBudget(BUDGET))


def test_budget_is_shared_by_the_tools_of_a_request() -> None:
    """What one tool may take, many tools together may not: the budget is per request."""
    tool = referenceBomb(2, levels=5)  # 2**5 leaves
    budget = SchemaBudget(BUDGET)
    geminiSchema(tool, budget)
    spent = BUDGET - budget.left
    assert 0 < spent < BUDGET / 4
    for _ in range(BUDGET // spent - 1):
        geminiSchema(tool, budget)
    with pytest.raises(SchemaTooComplex):
        geminiSchema(tool, budget)


def test_no_recursion_error_on_very_deep_input() -> None:
    assert list(geminiProblems(geminiSchema(nested(5000)))) == []


KITCHEN_SINK: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "Tag": {"type": "string", "enum": ["a", "b", None], "title": "Tag"},
        "Tree": obj({"kids": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}}),
    },
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "uniqueItems": True},
        "tree": {"$ref": "#/$defs/Tree"},
        "when": {"type": ["string", "null"], "format": "date-time"},
        "uri": {"type": "string", "format": "uri"},
        "mode": {"oneOf": [{"const": "fast"}, {"const": "slow"}, {"type": "integer", "const": 3}]},
        "limits": {
            "type": "object",
            "patternProperties": {"^x-": {}},
            "allOf": [
                obj({"lo": {"type": "integer", "exclusiveMinimum": 0}}),
                {"required": ["lo"]},
            ],
        },
        "pair": {"type": "array", "prefixItems": [S, {"type": ["number", "boolean"]}]},
        "anything": {},
        "nothing": False,
    },
    "required": ["tags", "nothing", "missing"],
    "additionalProperties": False,
    "if": {"properties": {"mode": {"const": "fast"}}},
    "then": {"required": ["when"]},
}


def test_kitchen_sink_is_accepted_and_input_is_untouched() -> None:
    before = copy.deepcopy(KITCHEN_SINK)
    out = geminiSchema(KITCHEN_SINK)
    assert KITCHEN_SINK == before
    assert list(geminiProblems(out)) == []
    assert FORBIDDEN.isdisjoint(keywords(out))
    assert out["required"] == ["tags"]
    assert out["properties"]["limits"] == obj(
        {"lo": {"type": "integer", "minimum": 1}}, required=["lo"]
    )
    assert out["properties"]["mode"] == {
        "anyOf": [
            {"type": "string", "enum": ["fast"]},
            {"type": "string", "enum": ["slow"]},
            {"type": "integer", "description": "Allowed values: 3."},
        ]
    }
    assert out["properties"]["tags"]["items"] == {
        "type": "string",
        "enum": ["a", "b"],
        "description": "Tag",
        "nullable": True,
    }


def _containers(value: Any) -> Iterator[int]:
    if isinstance(value, dict | list):
        yield id(value)
        for inner in value.values() if isinstance(value, dict) else value:
            yield from _containers(inner)


def test_result_shares_nothing_with_the_input() -> None:
    schema = {
        "type": "object",
        "properties": {"e": {"type": "string", "enum": ["a"]}, "l": {"type": "array", "items": S}},
        "required": ["e"],
    }
    out = geminiSchema(schema)
    assert out == schema
    assert set(_containers(out)).isdisjoint(_containers(schema))
    out["properties"]["e"]["enum"].append("b")
    out["required"].append("l")
    assert schema["properties"]["e"]["enum"] == ["a"]
    assert schema["required"] == ["e"]


@pytest.mark.parametrize(
    "schema",
    [
        p.values[0]
        for table in (DROPPED_CASES, OBJECT_CASES, REF_CASES, COMBINER_CASES, ROOT_CASES)
        for p in table
    ],
)
def test_every_table_result_is_accepted(schema: Any) -> None:
    assert list(geminiProblems(geminiSchema(schema))) == []


def test_checker_catches_what_gemini_refuses() -> None:
    # Guards geminiProblems itself: each of these is a 400 at Gemini.
    bad = [
        obj({"a": S}, additionalProperties=False),
        obj({"a": {"type": ["string", "null"]}}),
        obj({"a": S}, required=["b"]),
        obj({"a": {"type": "integer", "enum": [1]}}),
        obj({"a": {"type": "array"}}),
        obj({"a": {"anyOf": [S, N], "description": "x"}}),
        obj({"a": {"description": "no type"}}),
        obj({"a": {"type": "string", "format": "uri"}}),
    ]
    for schema in bad:
        assert list(geminiProblems(schema)), schema


def _fixtureSchemas() -> list[Any]:
    schemas: dict[str, Any] = {}
    for body in capturedBodies():
        if not isinstance(body, dict):
            continue
        for tool in body.get("tools") or []:
            if isinstance(tool.get("input_schema"), dict):
                key = json.dumps(tool["input_schema"], sort_keys=True)
                schemas.setdefault(key, pytest.param(tool["input_schema"], id=tool["name"]))
    return list(schemas.values())


FIXTURE_SCHEMAS = _fixtureSchemas()


def test_fixture_schemas_are_present() -> None:
    # Guards the parametrized test below against silently collecting nothing.
    assert len(FIXTURE_SCHEMAS) >= 20


@pytest.mark.parametrize("schema", FIXTURE_SCHEMAS)
def test_every_claude_code_tool_schema_is_accepted(schema: dict[str, Any]) -> None:
    before = copy.deepcopy(schema)
    out = geminiSchema(schema)
    assert schema == before
    assert FORBIDDEN.isdisjoint(keywords(out)), sorted(FORBIDDEN & set(keywords(out)))
    assert list(geminiProblems(out)) == []
    # Nothing a tool takes is lost: same property names, same required names.
    assert set(out.get("properties", {})) == set(schema.get("properties", {}))
    assert out.get("required", []) == schema.get("required", [])


# -- remembered reductions (GeminiSchemas) ------------------------------------------

READ_TOOL = {
    "type": "object",
    "properties": {
        "file_path": {"type": "string", "description": "absolute path"},
        "limit": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "mode": {"enum": ["a", "b"], "default": "a"},
    },
    "required": ["file_path"],
    "additionalProperties": False,
    "$schema": "https://json-schema.org/draft/2020-12/schema",
}


def test_a_remembered_schema_is_the_reduction_and_costs_the_same_steps() -> None:
    memo = GeminiSchemas()
    fresh = SchemaBudget()
    expected = geminiSchema(READ_TOOL, fresh)
    for _ in range(2):  # a miss, then a hit on an equal schema decoded anew
        budget = SchemaBudget()
        assert memo.reduce(json.loads(json.dumps(READ_TOOL)), budget) == expected
        assert budget.left == fresh.left


def test_a_remembered_schema_is_refused_as_its_reduction_was() -> None:
    memo = GeminiSchemas()
    spent = SchemaBudget()
    memo.reduce(READ_TOOL, spent)
    steps = spent.limit - spent.left
    assert steps > 0
    with pytest.raises(SchemaTooComplex):
        memo.reduce(READ_TOOL, SchemaBudget(steps - 1))  # a hit: still too many
    assert memo.reduce(READ_TOOL, SchemaBudget(steps)) == geminiSchema(READ_TOOL)


def test_only_an_equal_schema_is_a_hit() -> None:
    memo = GeminiSchemas()
    asList = {"type": "object", "properties": {"a": {"type": "number", "minimum": 1}}}
    asFloat = {"type": "object", "properties": {"a": {"type": "number", "minimum": 1.0}}}
    asTuple = {"type": "object", "properties": {"a": {"enum": ("x",)}}}
    asEnum = {"type": "object", "properties": {"a": {"enum": ["x"]}}}
    for schema in (asList, asFloat, asEnum, asTuple, asList, asFloat, asEnum, asTuple):
        assert memo.reduce(schema, SchemaBudget()) == geminiSchema(schema)
    assert len(memo._kept) == 3  # the tuple's JSON is not it: never kept


def test_remembered_schemas_are_bounded() -> None:
    memo = GeminiSchemas(limit=2)
    for n in range(5):
        memo.reduce({"type": "object", "properties": {f"p{n}": {"type": "string"}}}, SchemaBudget())
        assert len(memo._kept) <= 2


def test_remembered_schemas_are_bounded_in_bytes() -> None:
    """A caller's schemas must not become memory the daemon keeps: one over
    `maxBytes` is reduced and not kept, and the kept ones hold at most
    `totalBytes` of JSON in all."""
    memo = GeminiSchemas(maxBytes=200, totalBytes=300)
    huge = {"type": "object", "description": "x" * 500}
    assert memo.reduce(huge, SchemaBudget()) == geminiSchema(huge)
    assert memo._kept == {}
    for n in range(6):
        schema = {"type": "object", "description": f"{n}" * 100}
        assert memo.reduce(schema, SchemaBudget()) == geminiSchema(schema)
        assert 0 < sum(map(len, memo._kept)) <= 300
