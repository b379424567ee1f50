"""Request bodies: read under the size limit and validated into their pydantic models with OpenAI-style 400s,
and declared in the OpenAPI document (the routes parse bodies themselves, so FastAPI would not list them)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError

from alignkit.server.limits import APIError, Limits


def declare_bodies(app: FastAPI, bodies: dict[str, Any]) -> None:
    """The routes parse their bodies themselves (OpenAI-style 400s, a size limit before parsing); this declares
    each request body's JSON schema in the OpenAPI document, so generated clients and API fuzzers see them."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for path, cls in bodies.items():
            schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[cls.__name__] = schema
            op = doc["paths"][path]["post"]
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{cls.__name__}"}}}}
            op.setdefault("responses", {})["400"] = {"description": "invalid request (OpenAI-style error body)"}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


async def parse_body(request: Request, cls, limits: Limits):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limits.max_body_bytes:
            raise APIError(413, f"request body is over the limit of {limits.max_body_bytes} bytes")
    try:
        data = json.loads(bytes(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return validated(cls, data)


def validated(cls: Any, data: dict[str, Any]) -> Any:
    """``data`` as a ``cls`` request, or a 400 that names the first field at fault and why."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        raise APIError(400, f"{where}: {msg}" if where else msg, param=where or None) from None
