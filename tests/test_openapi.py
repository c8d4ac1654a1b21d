"""verifier/openapi.json: a valid OpenAPI 3.1 document that describes exactly the app's routes."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from verifier.core.certs import TrustStore
from verifier.core.errors import all_error_classes
from verifier.http import app as web
from verifier.settings import Settings
from verifier.testing import TestPKI

DOC_PATH = Path(web.__file__).with_name("openapi.json")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def text() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doc(text: str) -> dict[str, Any]:
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_document_is_pretty_printed_json(text: str, doc: dict[str, Any]) -> None:
    assert json.dumps(doc, indent=2, ensure_ascii=False) + "\n" == text


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert "3.1.0" == doc["openapi"]
    validate(doc)  # raises OpenAPIValidationError


def test_paths_and_methods_are_exactly_the_app_routes(pki: TestPKI, doc: dict[str, Any]) -> None:
    app = web.create_app(Settings(), trust=TrustStore([pki.root.cert]))
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method) for path, method, _ in _operations(doc)}
    assert routes == documented


def test_every_operation_is_described(doc: dict[str, Any]) -> None:
    ids = []
    for path, method, op in _operations(doc):
        ids.append(op["operationId"])
        assert op["summary"].strip(), (path, method)
        assert len(op["description"]) > 40, (path, method)
        assert "200" in op["responses"], (path, method)
        assert {"405", "500"} <= set(op["responses"]), (path, method)
    assert len(ids) == len(set(ids))


def test_verification_operations_carry_the_request_id(doc: dict[str, Any]) -> None:
    posts = [
        (path, op)
        for path, method, op in _operations(doc)
        if method == "post" and path.startswith(("/stir/", "/v1/verify"))
    ]
    assert 4 == len(posts)
    for path, op in posts:
        assert [{"$ref": "#/components/parameters/X-RequestID"}] == op["parameters"], path
        assert {"$ref": "#/components/headers/X-RequestID"} == op["responses"]["200"]["headers"][
            "X-RequestID"
        ], path
        assert {"400", "406", "411", "413", "415"} <= set(op["responses"]), path


def test_every_ref_resolves_and_every_component_is_used(doc: dict[str, Any]) -> None:
    refs = set(_refs(doc))
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(node, dict), ref
    # Security schemes are used by name in the operations' `security` requirements.
    for _path, _method, op in _operations(doc):
        for requirement in op.get("security", []):
            refs.update(f"#/components/securitySchemes/{name}" for name in requirement)
    # NotFound answers the paths the document does not list, so no operation refers to it.
    unlisted = {"#/components/responses/NotFound"}
    for kind, members in doc["components"].items():
        for name in members:
            if f"#/components/{kind}/{name}" in unlisted:
                continue
            assert f"#/components/{kind}/{name}" in refs, f"components/{kind}/{name} is unused"


def test_component_schemas_are_valid_json_schema(doc: dict[str, Any]) -> None:
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)  # raises SchemaError
        assert schema.get("description") or schema.get("type") or schema.get("oneOf"), name


def test_reason_enums_follow_the_error_classes(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    reason = schemas["Reason"]["properties"]
    classes = all_error_classes()
    assert sorted({c.sip_code for c in classes}) == reason["sip_code"]["enum"]
    # "unsupported_ppt" marks an Identity header of another ppt (div, rcd...): not verified.
    assert sorted({c.slug for c in classes} | {"unsupported_ppt"}) == reason["slug"]["enum"]
    atis = schemas["VerificationResponseFail"]["properties"]["verificationResponse"]
    assert reason["sip_code"]["enum"] == atis["properties"]["reasoncode"]["enum"]
