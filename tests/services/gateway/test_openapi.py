"""The gateway's OpenAPI 3.1 document (``/openapi.json``): served without a credential, loadable
by schemathesis, listing every route of the app; and schemathesis, run against the live gateway
with a super-admin key of a tenant of its own, finds no 5xx and no answer outside the document.

Routes documented but not fuzzed: Stripe's webhook and ``payment-method``, which answer 503
PAYMENT_PROVIDER_UNAVAILABLE by design while Stripe is off (the Stripe tests cover them); the
WebSocket upgrade, which is not plain HTTP (tests/services/gateway/test_websocket_frames.py); the document itself.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import schemathesis
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts.registry_events import CapabilitySpec, ModuleManifest, ModuleRegistered, encode_event
from democratic_ai.services.gateway import create_app
from democratic_ai.services.gateway.auth import STRIPE_WEBHOOK_PATH
from democratic_ai.services.gateway.config import GatewayConfig
from democratic_ai.services.gateway.openapi import openapi_document

from support.gateway import Gateway
from support.names import unique

# /openapi.json itself: schemathesis leaves the document it loads out of the run anyway.
# /v1/calls/live is an endless event stream: every request would wait out the request timeout
# (tests/services/gateway/test_calls_api.py covers its refusals).
NOT_FUZZED = (STRIPE_WEBHOOK_PATH, "/v1/billing/payment-method", "/v1/ws", "/openapi.json", "/v1/calls/live")


def _app() -> web.Application:
    return create_app(GatewayConfig(bus=None, database_url="postgresql://unused"))  # type: ignore[arg-type]


def test_every_route_is_in_the_document() -> None:
    app = _app()
    paths = openapi_document(app)["paths"]
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, operations in paths.items() for method in operations}
    assert len(routes) > 30
    assert documented == routes


def test_a_route_without_an_operation_is_an_error() -> None:
    app = _app()

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/undocumented", undocumented)
    with pytest.raises(ValueError, match="/v1/undocumented has no OpenAPI operation"):
        openapi_document(app)


def test_every_error_and_the_security_schemes_are_described() -> None:
    document = openapi_document(_app())
    assert document["openapi"] == "3.1.0"
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "bearer"}
    error = document["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message", "details"}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }, (method, path)
    ids = [op["operationId"] for operations in document["paths"].values() for op in operations.values()]
    assert len(ids) == len(set(ids))
    assert document["paths"]["/v1/tenants/{tenant}/users"]["post"]["operationId"] == "post_v1_tenants_tenant_users"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in document["paths"]["/v1/tenants"]["get"]  # the document's default: a credential


async def test_the_document_is_served_and_schemathesis_loads_it(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/openapi.json") as response:
        assert response.status == 200  # no credential needed
        document = await response.json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == set(document["paths"])
    assert any(op.path == "/v1/tenants/{tenant}/api-keys" and op.method == "post" for op in operations)


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    gateway: Gateway, nc: NATS, tmp_path: Path, forget_logins: None, ops_desk: None
) -> None:
    exclusions = [arg for path in NOT_FUZZED for arg in ("--exclude-path", path)]
    # A module registered once and no longer running, as a real registry holds: its capability is
    # listed, and calling it answers 503 CAPABILITY_UNAVAILABLE.
    gone = ModuleManifest(module_id=unique("gone"), capabilities=(CapabilitySpec(action=f"{unique('gone')}.op"),))
    registered = ModuleRegistered(manifest=gone, digest=gone.digest(), at=datetime.now(UTC))
    await nc.jetstream().publish(f"registry.{gone.module_id}.registered", encode_event(registered))
    # Half the {tenant} path parameters name a real tenant (not the key's own: suspending that would
    # refuse the rest of the run), so the handlers behind the 404 are reached too.
    target = unique("fuzzed")
    async with (
        aiohttp.ClientSession(headers=gateway.headers) as http,
        http.post(f"{gateway.url}/v1/tenants", json={"tenant_id": target}) as response,
    ):
        assert response.status == 201, await response.text()
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        # Not a sign-up and login of its own (it spots POST .../users and /v1/auth/login): the key given.
        "[auth]\nauto-signup = false\n"
        f'[dictionaries.tenant]\nvalues = ["{target}"]\n'
        '[parameters]\n"path.tenant" = { dictionary = "tenant", probability = 0.5 }\n'
        # A call's documented answers that depend on the module, not on the request: 502 MODULE_ERROR,
        # 503 CAPABILITY_UNAVAILABLE (schemathesis reuses the names GET /v1/capabilities lists, and the
        # session's registry holds modules no longer running), 504 TIMEOUT. A 500 still fails.
        '[[operations]]\ninclude-path = "/v1/capabilities/{capability}/invoke"\n'
        'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]\n'
    )
    process = await asyncio.create_subprocess_exec(
        Path(sys.executable).with_name("schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report-dir",
        str(tmp_path),
        "-H",
        f"X-API-Key: {gateway.api_key}",
        *exclusions,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its cache of crashes (.schemathesis/) stays out of the work tree
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=170)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    paths = openapi_document(gateway.app)["paths"]
    fuzzed = sum(len(operations) for path, operations in paths.items() if path not in NOT_FUZZED)
    assert re.search(rf"Selected: {fuzzed}/\d+\s+Tested: {fuzzed}\b", report), report
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases is not None and cases[1] == cases[2] and int(cases[1]) > 500, report
