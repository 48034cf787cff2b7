"""Holding Criteo models (the client's, and the emulator's own) against one of Criteo's OpenAPI
documents (test helper). A model mirrors a schema when it names it in a `criteo_schema` class
attribute (`Name` or `Name#/json/pointer`); `criteo_partial` says it names only some properties.

The documents stay in `shared/reference/criteo-openapi/` beside the repository (never copied in);
`document_path(name)` finds them from this file. A test that needs one is skipped, naming the path,
when it is absent, and fails instead in CI (`tests.required`).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tests.required import Test, needs

Model = type[BaseModel]


def document_path(name: str) -> Path:
    """`<repo>/../shared/reference/criteo-openapi/<name>`."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "criteo-openapi" / name


def criteo_models(module: types.ModuleType) -> list[Model]:
    """The models defined in `module` that mirror a Criteo schema, by name."""
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == module.__name__
        and schema_of(value)
    ]
    return sorted(found, key=lambda model: model.__name__)


def schema_of(model: Model) -> str:
    return str(getattr(model, "criteo_schema", ""))


class OpenApiDocument:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def needed(self) -> Callable[[Test], Test]:
        """A decorator for a test that reads the document: skipped (failed in CI) without it."""
        return needs(self.path.exists(), f"Criteo's OpenAPI document not found at {self.path}")

    @cached_property
    def body(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], json.loads(self.path.read_text()))

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        name = ref_name(node)
        return typing.cast(dict[str, Any], self.body["components"]["schemas"][name]) if name else node

    def schema_at(self, location: str) -> dict[str, Any]:
        """`Name` or `Name#/a/b`: a component schema, or an inline object inside one."""
        name, _, pointer = location.partition("#")
        node = self.resolve({"$ref": f"#/components/schemas/{name}"})
        for part in filter(None, pointer.split("/")):
            node = self.resolve(node[part])
        return node

    def property_enum(self, prop: dict[str, Any]) -> set[str] | None:
        prop = self.resolve(prop)
        if "enum" in prop:
            return set(prop["enum"])
        items = prop.get("items")
        if isinstance(items, dict) and "enum" in self.resolve(items):
            return set(self.resolve(items)["enum"])
        return None

    def mismatches(self, model: Model) -> list[str]:
        """How `model` differs from its schema: property names (a subset when `criteo_partial`),
        required ones, enum values, and which schema each nested model mirrors."""
        schema = self.schema_at(schema_of(model))
        properties: dict[str, Any] = schema.get("properties", {})
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        found: list[str] = []
        if getattr(model, "criteo_partial", False):
            if extra := set(fields) - set(properties):
                found.append(f"properties not in the schema: {sorted(extra)}")
        elif set(fields) != set(properties):
            found.append(f"property names differ: {sorted(set(fields) ^ set(properties))}")
        required = {name for name, field in fields.items() if field.is_required()}
        if required != set(schema.get("required", [])):
            found.append(f"required differ: {sorted(required ^ set(schema.get('required', [])))}")
        for name, field in fields.items():
            prop = properties.get(name)
            if prop is None:
                continue
            if literal_values(field.annotation) != self.property_enum(prop):
                found.append(f"enum of {name} differs")
            nested = nested_models(field.annotation)
            target = property_target(schema_of(model), name, prop)
            if nested and [schema_of(m) for m in nested] != [target]:
                found.append(f"{name} nests {[schema_of(m) for m in nested]}, the schema {target}")
        return found

    def json_schema_of(self, node: dict[str, Any]) -> str | None:
        for media in ("application/json", "text/json", "application/*+json"):
            if media in node.get("content", {}):
                return ref_name(node["content"][media]["schema"])
        return None


def ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def flatten(annotation: Any) -> list[Any]:
    """Every type inside an annotation: unions, lists and dicts opened up."""
    origin = typing.get_origin(annotation)
    if origin is None or origin is Literal:
        return [annotation]
    inner: list[Any] = []
    for arg in typing.get_args(annotation):
        inner.extend(flatten(arg))
    return inner if origin in (typing.Union, types.UnionType) else [annotation, *inner]


def literal_values(annotation: Any) -> set[str] | None:
    literals = [t for t in flatten(annotation) if typing.get_origin(t) is Literal]
    if not literals:
        return None
    return {value for literal in literals for value in typing.get_args(literal)}


def nested_models(annotation: Any) -> list[Model]:
    return [t for t in flatten(annotation) if isinstance(t, type) and issubclass(t, BaseModel) and schema_of(t)]


def property_target(owner: str, name: str, prop: dict[str, Any]) -> str | None:
    """The schema a nested model must mirror: the $ref'd schema, or the inline object's location."""
    target = ref_name(prop) or (ref_name(prop["items"]) if isinstance(prop.get("items"), dict) else None)
    if target:
        return target
    if prop.get("type") == "object" and "properties" in prop:
        base, _, pointer = owner.partition("#")
        return f"{base}#{pointer}/properties/{name}"
    return None


def model_field(model: Model, wire_name: str) -> FieldInfo:
    return next(field for name, field in model.model_fields.items() if (field.alias or name) == wire_name)
