"""JSON Schema -> the OpenAPI 3.0 subset Gemini accepts as function `parameters`.

Gemini, also behind its OpenAI-compatible endpoint, parses `parameters` into a
protobuf `Schema` message. One keyword outside that message fails the whole request
with a 400 ("Unknown name \\"additionalProperties\\"", "Proto field is not repeating"
for a type list), and some shapes it can hold are refused all the same ("enum: only
allowed for STRING type", "required[0]: property is not defined", "items: missing
field"). Claude Code's tools use JSON Schema 2020-12, so `geminiSchema` reduces them
to what Gemini takes:

- Only these keywords are kept: `type`, `format`, `description`, `nullable`, `enum`,
  `items`, `properties`, `required`, `anyOf`, `minItems`, `maxItems`, `minLength`,
  `maxLength`, `minProperties`, `maxProperties`, `minimum`, `maximum`, `pattern`.
  Everything else is dropped (`$schema`, `$id`, `additionalProperties`,
  `propertyNames`, `default`, `examples`, `if`/`then`/`else`, `not`, …). `title`
  becomes the description when there is none.
- A local `$ref` (`#/$defs/X`, `#/definitions/X`, any `#/…` pointer) is inlined. A
  recursive, unresolvable or too deep one becomes `{"type": "object"}`, and so
  does anything beyond `MAX_DEPTH` levels or `MAX_NODES` nodes.
- `allOf` is merged into one schema: the union of properties and required names,
  the tighter of two bounds, and the first pattern, format and description.
- `oneOf` becomes `anyOf`. A null branch makes the node nullable. A branch that
  allows anything makes the whole `anyOf` a no-op. A single remaining branch is
  merged into its parent. Otherwise the parent's other keywords are copied into
  each branch, and the node keeps only `anyOf`.
- A type list: `["string", "null"]` becomes `string` plus `nullable`. Several
  non-null types become an `anyOf` with one branch per type, each with that type's
  keywords.
- Every node gets one type. It comes from the node's keywords when they tell;
  otherwise it is `string`, because Gemini has no "any" type and a model can put
  any value in a string.
- `enum` is kept only on string nodes and only with string values (`const: X` is
  `enum: [X]`; a null value makes the node nullable). Gemini refuses any other
  enum, so one on a number, integer or boolean is dropped, and its values are
  added to the description so the model still sees them.
- `exclusiveMinimum`/`exclusiveMaximum` become `minimum`/`maximum`: moved by one
  for integers, and kept at the same (slightly looser) bound for numbers.
- `format` is kept only where Gemini documents it: `date-time` and `enum` for
  strings, `float`/`double` for numbers, `int32`/`int64` for integers.
- An array always has `items`. Missing or unconstrained items become strings.
- `required` names only properties that exist.
- The root is always an object. A top-level `anyOf` of objects becomes one object
  with every branch's properties; only names all branches require stay required.

Where the subset cannot say what the input says, the result is looser, with two
exceptions: a value allowed to be anything becomes a string, and a reference that
cannot be inlined becomes an object, because Gemini needs a type on every node.
Either way, Claude Code checks tool input against its own original schema, so a
schema that is off costs at most one retried call. One unknown keyword, by
contrast, fails every request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from ccproxy.translate.values import isInt, isNumber

# Nesting deeper than this is cut off (each level is one property, item, branch or
# inlined reference); Claude Code's own tools are about 6 deep.
MAX_DEPTH = 32
# References inlined within one another at most this deep.
MAX_REF_DEPTH = 8
# Schema nodes reduced per call at most. Inlining can grow a schema exponentially
# (each definition using the next one several times), and one client's tool list
# must not stall a proxy that many people share. Claude Code's largest tool has
# 15 nodes.
MAX_NODES = 20_000

_TYPES = ("string", "number", "integer", "boolean", "array", "object")
_FORMATS = {
    "string": {"date-time", "enum"},
    "number": {"float", "double"},
    "integer": {"int32", "int64"},
}
_LOWER_BOUNDS = ("minimum", "minLength", "minItems", "minProperties", "_xmin")
_UPPER_BOUNDS = ("maximum", "maxLength", "maxItems", "maxProperties", "_xmax")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# Keywords that belong to one type: they go with that type's branch when a type
# list is split, and they tell a node's type when it names none.
_TYPE_KEYWORDS = {
    "object": ("properties", "required", "minProperties", "maxProperties"),
    "array": ("items", "minItems", "maxItems"),
    "string": ("minLength", "maxLength", "pattern"),
    "number": ("minimum", "maximum", "_xmin", "_xmax"),
    "integer": ("minimum", "maximum", "_xmin", "_xmax"),
    "boolean": (),
}
# Keywords that say nothing about which values are allowed.
_ANNOTATIONS = frozenset({"description", "nullable"})
# What stands in for a reference that cannot be inlined (internal form: type list).
_REF_FALLBACK: dict[str, Any] = {"type": ["object"]}

Schema = dict[str, Any]


def geminiSchema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` that Gemini accepts as a function's `parameters`.

    The input is never changed, and the result shares no list or dict with it.
    """
    reducer = _Reducer(schema if isinstance(schema, dict) else {})
    node = reducer.node(reducer.root, 0, ())
    if "anyOf" in node:
        node = _unionOfObjects(node)
    out = _seal(node)
    if out.get("type") != "object":
        return {"type": "object", "properties": {}}
    out.pop("nullable", None)
    return out


class _Reducer:
    """Phase one: JSON Schema -> a merged intermediate form.

    The intermediate form uses only the kept keywords, with three differences from
    the output: `type` is a list of non-null type names (empty means "only null"),
    `_xmin`/`_xmax` hold exclusive bounds until the type is known, and `_anyNull`
    records that an `anyOf` had a null branch.
    """

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.budget = MAX_NODES

    def node(self, schema: Any, depth: int, refs: tuple[str, ...]) -> Schema:
        if not isinstance(schema, dict):
            return {}  # `true`, or something that is no schema: allows anything
        self.budget -= 1
        if depth > MAX_DEPTH or self.budget < 0:
            return _copy(_REF_FALLBACK)
        parts = [self._own(schema, depth, refs)]
        oneOf = schema.get("oneOf")
        if isinstance(oneOf, list):
            parts.append(self._anyOf(oneOf, depth, refs))
        ref = schema.get("$ref")
        if isinstance(ref, str):
            parts.append(self._ref(ref, depth, refs))
        allOf = schema.get("allOf")
        if isinstance(allOf, list):
            parts.extend(self.node(sub, depth + 1, refs) for sub in allOf)
        merged = parts[0]
        for part in parts[1:]:
            merged = _merge(merged, part)
        return _settleAnyOf(merged)

    def _ref(self, ref: str, depth: int, refs: tuple[str, ...]) -> Schema:
        if ref in refs or len(refs) >= MAX_REF_DEPTH:
            return _copy(_REF_FALLBACK)
        target = self._resolve(ref)
        if target is None:
            return _copy(_REF_FALLBACK)
        return self.node(target, depth + 1, (*refs, ref))

    def _resolve(self, ref: str) -> Any:
        """The schema a local JSON pointer (`#/$defs/X`) names, or None."""
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return None  # another document, or an `$anchor`: not followed
        target: Any = self.root
        for raw in ref[2:].split("/"):
            key = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                return None
        return target if isinstance(target, dict | bool) else None

    def _own(self, schema: dict[str, Any], depth: int, refs: tuple[str, ...]) -> Schema:
        """The node's own keywords, without `$ref`, `allOf` and `oneOf`."""
        out: Schema = {}
        kind = schema.get("type")
        if isinstance(kind, str):
            kind = [kind]
        if isinstance(kind, list):
            names = _unique(t for t in kind if t in _TYPES)
            if names or "null" in kind:
                out["type"] = names
            if "null" in kind:
                out["nullable"] = True
        if schema.get("nullable") is True:
            out["nullable"] = True

        description = schema.get("description")
        title = schema.get("title")
        if isinstance(description, str) and description:
            out["description"] = description
        elif isinstance(title, str) and title:
            out["description"] = title

        values: list[Any] | None = None
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            values = list(schema["enum"])
        if "const" in schema:
            const = [schema["const"]]
            values = const if values is None else _intersect(values, const) or values
        if values is not None:
            if None in values:
                out["nullable"] = True
                values = [v for v in values if v is not None]
                if not values:
                    out["type"] = []  # only null
            if values:
                out["enum"] = _copy(values)

        for key in ("minimum", "maximum"):
            if isNumber(schema.get(key)):
                out[key] = schema[key]
        for key, bound, inner in (
            ("exclusiveMinimum", "minimum", "_xmin"),
            ("exclusiveMaximum", "maximum", "_xmax"),
        ):
            value = schema.get(key)
            if isNumber(value):
                out[inner] = value
            elif value is True and bound in out:  # draft-04: a flag on the bound
                out[inner] = out.pop(bound)
        for key in _COUNTS:
            value = schema.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[key] = value
        for key in ("pattern", "format"):
            if isinstance(schema.get(key), str):
                out[key] = schema[key]

        properties = schema.get("properties")
        if isinstance(properties, dict):
            out["properties"] = {
                name: self.node(sub, depth + 1, refs)
                for name, sub in properties.items()
                if sub is not False  # a property that may never be present
            }
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = _unique(r for r in required if isinstance(r, str))

        items = self._items(schema, depth, refs)
        if items is not None:
            out["items"] = items

        anyOf = schema.get("anyOf")
        if isinstance(anyOf, list):
            out = _merge(out, self._anyOf(anyOf, depth, refs))
        return out

    def _items(self, schema: dict[str, Any], depth: int, refs: tuple[str, ...]) -> Schema | None:
        """`items`, with tuple forms (`prefixItems`, a list `items`) as one anyOf."""
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        tuple_ = prefix if isinstance(prefix, list) else items if isinstance(items, list) else None
        if tuple_ is None:
            return None if items is None or items is False else self.node(items, depth + 1, refs)
        rest = schema.get("additionalItems") if isinstance(items, list) else items
        members = list(tuple_)
        if rest is not None and rest is not False:
            members.append(rest)
        if not members:
            return None
        return _settleAnyOf({"anyOf": [self.node(m, depth + 1, refs) for m in members]})

    def _anyOf(self, branches: list[Any], depth: int, refs: tuple[str, ...]) -> Schema:
        out: Schema = {"anyOf": []}
        for branch in branches:
            if _isOnlyNull(branch):
                out["_anyNull"] = True
            else:
                out["anyOf"].append(self.node(branch, depth + 1, refs))
        return out


def _settleAnyOf(node: Schema) -> Schema:
    """Simplify an `anyOf` node: drop it when it is a no-op, merge a single branch
    into the parent, or copy the parent's keywords into every branch."""
    if "anyOf" not in node:
        return node
    rest = {k: v for k, v in node.items() if k not in ("anyOf", "_anyNull")}
    anyNull = node.get("_anyNull", False)
    branches = node["anyOf"]
    if any(_allowsAnything(b) for b in branches):
        return rest
    if not branches:  # only null branches
        rest["nullable"] = True
        rest.setdefault("type", [])
        return rest
    if len(branches) == 1:
        merged = _merge(rest, branches[0])
        if anyNull:
            merged["nullable"] = True
        return _settleAnyOf(merged)
    shared = {k: v for k, v in rest.items() if k != "description"}
    out: list[Schema] = []
    for branch in branches:
        merged = _settleAnyOf(_merge(shared, branch)) if shared else branch
        if anyNull:
            merged = {**merged, "nullable": True}
        # A nested anyOf with nothing beside it joins this one.
        if "anyOf" in merged and set(merged) <= {"anyOf", "description"}:
            out.extend(merged["anyOf"])
        else:
            out.append(merged)
    settled: Schema = {"anyOf": out}
    if "description" in rest:
        settled["description"] = rest["description"]
    return settled


def _merge(a: Schema, b: Schema) -> Schema:
    """Two intermediate schemas as one that both must hold (for allOf, $ref siblings)."""
    out = dict(a)
    for key, value in b.items():
        if key == "_anyNull":
            continue  # travels with anyOf, below
        if key not in out:
            out[key] = value
            if key == "anyOf" and b.get("_anyNull"):
                out["_anyNull"] = True
            continue
        mine = out[key]
        if key == "type":
            out[key] = _intersectTypes(mine, value)
        elif key == "properties":
            props = dict(mine)
            for name, sub in value.items():
                props[name] = _settleAnyOf(_merge(props[name], sub)) if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = _unique([*mine, *value])
        elif key == "enum":
            out[key] = _intersect(mine, value) or mine
        elif key == "items":
            out[key] = _settleAnyOf(_merge(mine, value))
        elif key in _LOWER_BOUNDS:
            out[key] = max(mine, value)
        elif key in _UPPER_BOUNDS:
            out[key] = min(mine, value)
        # description, pattern, format, anyOf: the first one stays
    if _allowsNull(a) and _allowsNull(b):
        if "nullable" in a or "nullable" in b:
            out["nullable"] = True
    else:
        out.pop("nullable", None)
    return out


def _seal(node: Schema) -> dict[str, Any]:
    """Phase two: the intermediate form -> Gemini's Schema, one type per node."""
    if "anyOf" in node:
        return _sealAnyOf(node)
    types = node.get("type")
    nullable = node.get("nullable") is True
    if not types:  # no type, or only null
        types = [_inferType(node)]
    if len(types) > 1:
        return _sealAnyOf(_splitTypes(node, types))
    kind = types[0]
    out: dict[str, Any] = {"type": kind}
    description = node.get("description")
    values = node.get("enum")
    if values is not None:
        strings = [v for v in values if isinstance(v, str)]
        if kind == "string" and strings:
            out["enum"] = strings
        elif kind != "string":
            # Gemini takes an enum on strings only: keep the choice as words.
            hint = "Allowed values: " + ", ".join(json.dumps(v) for v in values) + "."
            description = f"{description}\n\n{hint}" if description else hint
    if description:
        out["description"] = description
    if nullable:
        out["nullable"] = True
    form = node.get("format")
    if form in _FORMATS.get(kind, ()):
        out["format"] = form
    if kind in ("number", "integer"):
        _sealBounds(node, kind, out)
    elif kind == "string":
        for key in ("minLength", "maxLength", "pattern"):
            if key in node:
                out[key] = node[key]
    elif kind == "array":
        items = node.get("items")
        out["items"] = _seal(items) if items and not _allowsAnything(items) else {"type": "string"}
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = node[key]
    elif kind == "object":
        _sealObject(node, out)
    return out


def _sealAnyOf(node: Schema) -> dict[str, Any]:
    """An anyOf node holds nothing else: its description goes to every branch."""
    description = node.get("description")
    branches: list[dict[str, Any]] = []
    for branch in node["anyOf"]:
        if description and "description" not in branch:
            branch = {**branch, "description": description}
        sealed = _seal(branch)
        if sealed not in branches:
            branches.append(sealed)
    if len(branches) == 1:
        return branches[0]
    return {"anyOf": branches}


def _splitTypes(node: Schema, types: list[str]) -> Schema:
    """`type: [a, b]` as `anyOf`, each branch with only its own type's keywords."""
    common = {k: node[k] for k in ("description", "nullable", "format") if k in node}
    tests = dict(_ENUM_TYPES)
    branches = []
    for kind in types:
        branch = {**common, "type": [kind]}
        branch.update({k: node[k] for k in _TYPE_KEYWORDS[kind] if k in node})
        if "enum" in node:
            values = [v for v in node["enum"] if kind in tests and tests[kind](v)]
            if not values:
                continue  # no listed value has this type
            branch["enum"] = values
        branches.append(branch)
    return {"anyOf": branches or [{**common, "type": types[:1]}]}


def _sealBounds(node: Schema, kind: str, out: dict[str, Any]) -> None:
    low, high = node.get("minimum"), node.get("maximum")
    if "_xmin" in node:
        x = node["_xmin"]
        bound = math.floor(x) + 1 if kind == "integer" else x
        low = bound if low is None else max(low, bound)
    if "_xmax" in node:
        x = node["_xmax"]
        bound = math.ceil(x) - 1 if kind == "integer" else x
        high = bound if high is None else min(high, bound)
    if low is not None:
        out["minimum"] = low
    if high is not None:
        out["maximum"] = high


def _sealObject(node: Schema, out: dict[str, Any]) -> None:
    properties = node.get("properties")
    if properties is not None:
        out["properties"] = {name: _seal(sub) for name, sub in properties.items()}
    required = [r for r in node.get("required", ()) if r in out.get("properties", {})]
    if required:
        out["required"] = required
    for key in ("minProperties", "maxProperties"):
        if key in node:
            out[key] = node[key]


def _unionOfObjects(node: Schema) -> Schema:
    """A top-level anyOf as one object: Gemini wants an object for `parameters`."""
    out: Schema = {"type": ["object"], "properties": {}}
    if "description" in node:
        out["description"] = node["description"]
    requiredSets = []
    for branch in node["anyOf"]:
        for name, sub in branch.get("properties", {}).items():
            out["properties"].setdefault(name, sub)
        requiredSets.append(branch.get("required", []))
    common = [r for r in requiredSets[0] if all(r in s for s in requiredSets[1:])]
    if common:
        out["required"] = common
    return out


def _inferType(node: Schema) -> str:
    """The type a node's keywords imply; `string` when they imply none."""
    for kind in ("object", "array", "string"):
        if any(k in node for k in _TYPE_KEYWORDS[kind]):
            return kind
    values = node.get("enum")
    if values:
        for kind, test in _ENUM_TYPES:
            if all(test(v) for v in values):
                return kind
    if any(k in node for k in _TYPE_KEYWORDS["number"]):
        return "number"
    return "string"


_ENUM_TYPES: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("string", lambda v: isinstance(v, str)),
    ("boolean", lambda v: isinstance(v, bool)),
    ("integer", isInt),
    ("number", isNumber),
)


def _intersectTypes(a: list[str], b: list[str]) -> list[str]:
    """Types both lists allow (an integer is a number); `a` when none are."""
    both = []
    for kind in a:
        if kind in b:
            both.append(kind)
        elif {kind, *b} >= {"number", "integer"}:
            both.append("integer")
    both = _unique(both)
    if not both and a and b:
        return a  # contradictory: no value can satisfy it, so keep the looser side
    return both


def _allowsNull(node: Schema) -> bool:
    return node.get("nullable") is True or ("type" not in node and "enum" not in node)


def _allowsAnything(node: Schema) -> bool:
    return set(node) <= _ANNOTATIONS


def _isOnlyNull(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return (
        kind == "null"
        or kind == ["null"]
        or ("const" in schema and schema["const"] is None)
        or schema.get("enum") == [None]
    )


def _intersect(a: list[Any], b: list[Any]) -> list[Any]:
    """Values in both lists, by JSON value (so 1 and true stay apart)."""
    keys = {_key(v) for v in b}
    return [v for v in a if _key(v) in keys]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _unique(values: Any) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value, so the result shares nothing with the input."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
