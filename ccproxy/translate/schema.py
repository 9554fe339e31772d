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
  does anything beyond `MAX_DEPTH` levels.
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

The work is bounded per request, not per tool: all the tools of one request share
one `SchemaBudget` of `MAX_SCHEMA_STEPS`, and a request that needs more is refused
(`SchemaTooComplex`) rather than left to stall a proxy that many people share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import orjson

from ccproxy.translate.values import isInt, isNumber

# Nesting deeper than this is cut off (each level is one property, item, branch or
# inlined reference); Claude Code's own tools are about 6 deep.
MAX_DEPTH = 32
# References inlined within one another at most this deep.
MAX_REF_DEPTH = 8
# Steps of work that reducing one request's tool schemas may take, all its tools
# together. A step is one schema node visited or written, one list entry (an enum
# value, a required name, a branch) or `TEXT_PER_STEP` characters of text copied,
# and a `$ref` costs its target's steps again each time it is inlined: inlining
# can grow a schema exponentially (each definition using the next one several
# times), so the steps, not the body's size, tell the time it takes: up to ~3 µs
# each, a third of a second for all. Claude Code's whole tool list takes ~500.
MAX_SCHEMA_STEPS = 100_000
TEXT_PER_STEP = 64

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


class SchemaTooComplex(Exception):
    """Reducing a request's tool schemas would take more than its budget."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "the tool schemas are too large or complex for this upstream's schema mode "
            f"(gemini): reducing them would take over {limit} steps, the limit for all "
            "the tools of one request (MAX_SCHEMA_STEPS: a step is a schema node, a list "
            f"entry or {TEXT_PER_STEP} characters, and a $ref counts again each time it is "
            "inlined)"
        )
        self.limit = limit


class SchemaBudget:
    """The steps left for one request's tool schemas: one budget for all its tools,
    so that the work stays bounded however many tools a client sends."""

    def __init__(self, steps: int | None = None) -> None:
        self.limit = MAX_SCHEMA_STEPS if steps is None else steps
        self.left = self.limit

    def spend(self, steps: int = 1) -> None:
        """Take `steps`; raises `SchemaTooComplex` once the budget is overdrawn."""
        self.left -= steps
        if self.left < 0:
            raise SchemaTooComplex(self.limit)

    def text(self, text: str) -> None:
        """Take the steps for copying `text` once more."""
        if len(text) >= TEXT_PER_STEP:
            self.spend(len(text) // TEXT_PER_STEP)


def geminiSchema(schema: dict[str, Any], budget: SchemaBudget | None = None) -> dict[str, Any]:
    """A copy of `schema` that Gemini accepts as a function's `parameters`.

    The input is never changed, and the result shares no list or dict with it.
    `budget` is the request's, shared with its other tools (a new one when None);
    raises `SchemaTooComplex` when it runs out.
    """
    budget = SchemaBudget() if budget is None else budget
    reducer = _Reducer(schema if isinstance(schema, dict) else {}, budget)
    node = reducer.node(reducer.root, 0, ())
    if "anyOf" in node:
        node = _unionOfObjects(node, budget)
    out = _seal(node, budget)
    if out.get("type") != "object":
        return {"type": "object", "properties": {}}
    out.pop("nullable", None)
    return out


class GeminiSchemas:
    """`geminiSchema` remembered: the tool schemas of a session are the same on every
    request (Claude Code sends its 15 tools each turn), and reducing them is most of
    translating a request for a Gemini upstream.

    Exact, never a false hit: a schema is looked up by its JSON bytes, and a hit
    also compares equal to the schema remembered (so a tuple is not a list, nor
    1.0 a 1). A hit spends the steps the reduction spent on the request's budget,
    so a request's work is refused exactly when it was before. The schemas handed
    out are shared between requests: nothing downstream changes a translated
    request. At most `limit` are kept, of at most `maxBytes` of JSON each and
    `totalBytes` in all (all forgotten when full): what callers send must not
    become memory the daemon holds, and a session's schemas are a few KB.
    """

    def __init__(
        self, limit: int = 512, maxBytes: int = 32 * 1024, totalBytes: int = 2 * 1024 * 1024
    ) -> None:
        self.limit = limit
        self.maxBytes = maxBytes
        self.totalBytes = totalBytes
        self._kept: dict[bytes, tuple[Any, dict[str, Any], int]] = {}
        self._bytes = 0

    def reduce(self, schema: dict[str, Any], budget: SchemaBudget) -> dict[str, Any]:
        """`geminiSchema(schema, budget)`, remembered."""
        try:
            key = orjson.dumps(schema)
        except orjson.JSONEncodeError:  # not JSON (nested too deep): not kept
            return geminiSchema(schema, budget)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == schema:
            budget.spend(kept[2])
            return kept[1]
        left = budget.left
        out = geminiSchema(schema, budget)
        if len(key) > self.maxBytes:  # not a session's tool: reduced, not kept
            return out
        canonical = orjson.loads(key)
        if canonical == schema:  # else its JSON is not it (NaN, a tuple): not kept
            if len(self._kept) >= self.limit or self._bytes + len(key) > self.totalBytes:
                self._kept.clear()
                self._bytes = 0
            self._kept[key] = (canonical, out, left - budget.left)
            self._bytes += len(key)
        return out


class _Reducer:
    """Phase one: JSON Schema -> a merged intermediate form.

    The intermediate form uses only the kept keywords, with three differences from
    the output: `type` is a list of non-null type names (empty means "only null"),
    `_xmin`/`_xmax` hold exclusive bounds until the type is known, and `_anyNull`
    records that an `anyOf` had a null branch.
    """

    def __init__(self, root: dict[str, Any], budget: SchemaBudget) -> None:
        self.root = root
        self.budget = budget
        self._targets: dict[str, Any] = {}
        """Pointers resolved so far: a pointer inlined many times is read once."""

    def node(self, schema: Any, depth: int, refs: tuple[str, ...]) -> Schema:
        self.budget.spend()
        if not isinstance(schema, dict):
            return {}  # `true`, or something that is no schema: allows anything
        if depth > MAX_DEPTH:
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
            merged = _merge(merged, part, self.budget)
        return _settleAnyOf(merged, self.budget)

    def _ref(self, ref: str, depth: int, refs: tuple[str, ...]) -> Schema:
        self.budget.text(ref)  # compared and looked up on every use
        if ref in refs or len(refs) >= MAX_REF_DEPTH:
            return _copy(_REF_FALLBACK)
        if ref not in self._targets:
            self._targets[ref] = self._resolve(ref)
        target = self._targets[ref]
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
            self.budget.spend(len(kind))
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
            self.budget.spend(len(schema["enum"]))
            values = list(schema["enum"])
        if "const" in schema:
            const = [schema["const"]]
            values = const if values is None else _intersect(values, const, self.budget) or values
        if values is not None:
            if None in values:
                out["nullable"] = True
                values = [v for v in values if v is not None]
                if not values:
                    out["type"] = []  # only null
            if values:
                out["enum"] = _copy(values, self.budget)

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
            kept = out["properties"] = {
                name: self.node(sub, depth + 1, refs)
                for name, sub in properties.items()
                if sub is not False  # a property that may never be present
            }
            self.budget.spend(len(properties) - len(kept))
        required = schema.get("required")
        if isinstance(required, list):
            self.budget.spend(len(required))
            out["required"] = _unique(r for r in required if isinstance(r, str))

        items = self._items(schema, depth, refs)
        if items is not None:
            out["items"] = items

        anyOf = schema.get("anyOf")
        if isinstance(anyOf, list):
            out = _merge(out, self._anyOf(anyOf, depth, refs), self.budget)
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
        anyOf = {"anyOf": [self.node(m, depth + 1, refs) for m in members]}
        return _settleAnyOf(anyOf, self.budget)

    def _anyOf(self, branches: list[Any], depth: int, refs: tuple[str, ...]) -> Schema:
        out: Schema = {"anyOf": []}
        for branch in branches:
            if _isOnlyNull(branch):
                self.budget.spend()
                out["_anyNull"] = True
            else:
                out["anyOf"].append(self.node(branch, depth + 1, refs))
        return out


def _settleAnyOf(node: Schema, budget: SchemaBudget) -> Schema:
    """Simplify an `anyOf` node: drop it when it is a no-op, merge a single branch
    into the parent, or copy the parent's keywords into every branch."""
    if "anyOf" not in node:
        return node
    rest = {k: v for k, v in node.items() if k not in ("anyOf", "_anyNull")}
    anyNull = node.get("_anyNull", False)
    branches = node["anyOf"]
    budget.spend(len(branches))
    if any(_allowsAnything(b) for b in branches):
        return rest
    if not branches:  # only null branches
        rest["nullable"] = True
        rest.setdefault("type", [])
        return rest
    if len(branches) == 1:
        merged = _merge(rest, branches[0], budget)
        if anyNull:
            merged["nullable"] = True
        return _settleAnyOf(merged, budget)
    shared = {k: v for k, v in rest.items() if k != "description"}
    out: list[Schema] = []
    for branch in branches:
        merged = _settleAnyOf(_merge(shared, branch, budget), budget) if shared else branch
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


def _merge(a: Schema, b: Schema, budget: SchemaBudget) -> Schema:
    """Two intermediate schemas as one that both must hold (for allOf, $ref siblings)."""
    budget.spend()
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
            budget.spend(len(mine) + len(value))
            props = dict(mine)
            for name, sub in value.items():
                if name in props:
                    props[name] = _settleAnyOf(_merge(props[name], sub, budget), budget)
                else:
                    props[name] = sub
            out[key] = props
        elif key == "required":
            budget.spend(len(mine) + len(value))
            out[key] = _unique([*mine, *value])
        elif key == "enum":
            out[key] = _intersect(mine, value, budget) or mine
        elif key == "items":
            out[key] = _settleAnyOf(_merge(mine, value, budget), budget)
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


def _seal(node: Schema, budget: SchemaBudget) -> dict[str, Any]:
    """Phase two: the intermediate form -> Gemini's Schema, one type per node.

    Every node written takes its steps again, texts included: an inlined reference
    or an anyOf's shared keywords are copied into each place they apply to."""
    values = node.get("enum")
    budget.spend(1 + len(values or ()))  # read to infer or split the type, and copied
    if "anyOf" in node:
        return _sealAnyOf(node, budget)
    types = node.get("type")
    nullable = node.get("nullable") is True
    if not types:  # no type, or only null
        types = [_inferType(node)]
    if len(types) > 1:
        return _sealAnyOf(_splitTypes(node, types), budget)
    kind = types[0]
    out: dict[str, Any] = {"type": kind}
    description = node.get("description")
    if values is not None:
        strings = [v for v in values if isinstance(v, str)]
        if kind == "string" and strings:
            out["enum"] = strings
            for value in strings:
                budget.text(value)
        elif kind != "string":
            # Gemini takes an enum on strings only: keep the choice as words.
            hint = "Allowed values: " + ", ".join(json.dumps(v) for v in values) + "."
            description = f"{description}\n\n{hint}" if description else hint
    if description:
        budget.text(description)
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
        if "pattern" in out:
            budget.text(out["pattern"])
    elif kind == "array":
        items = node.get("items")
        useful = items and not _allowsAnything(items)
        out["items"] = _seal(items, budget) if useful else {"type": "string"}
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = node[key]
    elif kind == "object":
        _sealObject(node, out, budget)
    return out


def _sealAnyOf(node: Schema, budget: SchemaBudget) -> dict[str, Any]:
    """An anyOf node holds nothing else: its description goes to every branch."""
    description = node.get("description")
    branches: dict[str, dict[str, Any]] = {}  # by JSON text: a repeat is found at once
    for branch in node["anyOf"]:
        if description and "description" not in branch:
            branch = {**branch, "description": description}
        sealed = _seal(branch, budget)
        branches.setdefault(_key(sealed), sealed)
    if len(branches) == 1:
        return next(iter(branches.values()))
    return {"anyOf": list(branches.values())}


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


def _sealObject(node: Schema, out: dict[str, Any], budget: SchemaBudget) -> None:
    properties = node.get("properties")
    if properties is not None:
        sealed = out["properties"] = {}
        for name, sub in properties.items():
            budget.text(name)
            sealed[name] = _seal(sub, budget)
    names = node.get("required", ())
    budget.spend(len(names))
    required = [r for r in names if r in out.get("properties", {})]
    if required:
        out["required"] = required
    for key in ("minProperties", "maxProperties"):
        if key in node:
            out[key] = node[key]


def _unionOfObjects(node: Schema, budget: SchemaBudget) -> Schema:
    """A top-level anyOf as one object: Gemini wants an object for `parameters`."""
    out: Schema = {"type": ["object"], "properties": {}}
    if "description" in node:
        out["description"] = node["description"]
    branches = node["anyOf"]
    for branch in branches:
        properties = branch.get("properties", {})
        budget.spend(len(properties))
        for name, sub in properties.items():
            out["properties"].setdefault(name, sub)
    # The names every branch requires, in the first branch's order.
    common = set(branches[0].get("required", []))
    for branch in branches[1:]:
        required = branch.get("required", [])
        budget.spend(len(required))
        common = common.intersection(required)
    required = [r for r in branches[0].get("required", []) if r in common]
    if required:
        out["required"] = required
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


def _intersect(a: list[Any], b: list[Any], budget: SchemaBudget) -> list[Any]:
    """Values in both lists, by JSON value (so 1 and true stay apart)."""
    keys = {_key(v) for v in b}
    out = []
    for value in a:
        key = _key(value)
        budget.spend()
        budget.text(key)
        if key in keys:
            out.append(value)
    budget.spend(len(b))
    return out


def _key(value: Any) -> str:
    """A JSON value as text, the same for equal values (object keys sorted)."""
    return json.dumps(value, sort_keys=True, default=str)


def _unique(values: Any) -> list[Any]:
    """The values without repeats, in order (they are strings: a dict finds a repeat
    at once, where searching a list would take as long as the list)."""
    return list(dict.fromkeys(values))


def _copy(value: Any, budget: SchemaBudget | None = None) -> Any:
    """A deep copy of a JSON value, so the result shares nothing with the input."""
    if isinstance(value, dict | list) and budget is not None:
        budget.spend(len(value))
    if isinstance(value, dict):
        return {k: _copy(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v, budget) for v in value]
    return value
