"""Tenants, users and their logins, made through a gateway's API as a tenant's admin makes them."""

from __future__ import annotations

from support.client import http
from support.gateway import Gateway
from support.names import unique

PASSWORD = "correct horse battery staple"


async def new_tenant(gateway: Gateway) -> str:
    tenant = unique("acme")
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants", json={"tenant_id": tenant, "name": "Acme"}, credential=gateway.api_key
    )
    assert status == 201, (status, body)
    return tenant


async def new_user(gateway: Gateway, tenant: str, role: str, credential: str | None = None) -> dict:
    email = f"{unique(role)}@example.com"
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/users",
        json={"email": email, "password": PASSWORD, "role": role},
        credential=credential or gateway.api_key,
    )
    assert status == 201, (status, body)
    return {**body, "password": PASSWORD}


async def login(gateway: Gateway, tenant: str, user: dict) -> dict:
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/auth/login",
        json={"tenant_id": tenant, "email": user["email"], "password": user["password"]},
    )
    assert status == 200, (status, body)
    return body
