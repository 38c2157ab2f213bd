"""``GET /docs``: the API reference as one self-contained HTML page, rendered on the server from the OpenAPI schema.

FastAPI's own ``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from a CDN, so they are blank on
a machine without internet, and the assets are not in any installed package. This page needs nothing: every route
with its method, summary and request body, every body's fields (type, required, default) and the schemas they
refer to, as plain HTML with inline CSS and no script; its content security policy forbids any request.
``/openapi.json`` stays the machine-readable form.
"""

from __future__ import annotations

import html
import json
from typing import Any

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:0 auto;padding:0 20px 40px;color:#1d1d1f}"
    "code{font-family:ui-monospace,monospace;font-size:12.5px}table{border-collapse:collapse;margin:6px 0 14px}"
    "th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f6f6f8}"
    "h2{margin-top:28px;border-bottom:1px solid #ddd}.method{font-weight:bold;color:#0b5394}"
)
REF = "#/components/schemas/"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(name: str) -> str:
    return "schema-" + "".join(c if c.isalnum() else "-" for c in name)


def type_of(schema: dict[str, Any]) -> str:
    """A field's type as markup: ``string``, ``array of string``, ``MergeSpec`` (linked), unions with ``|``."""
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix(REF)
        return f'<a href="#{_anchor(name)}">{_esc(name)}</a>'
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(type_of(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "enum" in schema:
        return " | ".join(f"<code>{_esc(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_esc(json.dumps(schema['const']))}</code>"
    kind = schema.get("type", "any")
    if kind == "array":
        return "array of " + type_of(schema.get("items", {}))
    return _esc(kind)


def _fields(schema: dict[str, Any]) -> str:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return f"<p>{type_of(schema)}</p>"
    required = set(schema.get("required", []))
    rows = [
        f"<tr><td><code>{_esc(name)}</code></td><td>{type_of(prop)}</td><td>{'yes' if name in required else ''}</td>"
        f"<td>{_esc(json.dumps(prop['default'])) if 'default' in prop else ''}</td>"
        f"<td>{_esc(prop.get('description', ''))}</td></tr>"
        for name, prop in props.items()
    ]
    head = "<tr><th>field</th><th>type</th><th>required</th><th>default</th><th>about</th></tr>"
    extra = "" if schema.get("additionalProperties", True) else "<p>Other fields are refused (422).</p>"
    return f"<table>{head}{''.join(rows)}</table>{extra}"


def docs_page(openapi: dict[str, Any]) -> str:
    """The reference page of an OpenAPI document (FastAPI's ``app.openapi()``)."""
    info = openapi.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    parts = [
        f"<h1>{_esc(title)}</h1>",
        f"<p>{_esc(info.get('summary') or info.get('description') or '')}</p>",
        '<p>The same as JSON: <a href="openapi.json">/openapi.json</a>. Errors are '
        '<code>{"error": {"type", "message", "field"}}</code>.</p>',
        "<h2>Routes</h2>",
    ]
    for path, methods in openapi.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f'<h3><span class="method">{_esc(method.upper())}</span> <code>{_esc(path)}</code></h3>')
            if op.get("description") or op.get("summary"):
                parts.append(f"<p>{_esc(op.get('description') or op.get('summary'))}</p>")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parts.append(f"<p>Body (<code>{_esc(media)}</code>): {type_of(content.get('schema', {}))}</p>")
            codes = ", ".join(
                f"{_esc(code)} {_esc(r.get('description', ''))}" for code, r in op.get("responses", {}).items()
            )
            parts.append(f"<p>Answers: {codes}</p>")
    schemas = openapi.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        parts.append(f'<h3 id="{_anchor(name)}"><code>{_esc(name)}</code></h3>')
        if schema.get("description"):
            parts.append(f"<p>{_esc(schema['description'])}</p>")
        parts.append(_fields(schema))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(CONTENT_SECURITY_POLICY)}">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
