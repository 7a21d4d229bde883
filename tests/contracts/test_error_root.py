"""One error root: every domain error is a PlatformError with a stable code and no HTTP status;
the gateway's table alone turns a code into a status."""

from __future__ import annotations

import importlib
import pkgutil

from democratic_ai.contracts import ErrorCode, PlatformError
from democratic_ai.services.gateway.errors import STATUS, ApiError, status_of


def _every_error() -> set[type[PlatformError]]:
    for top in ("contracts", "hub", "schemas", "sdk", "projections", "services", "ops"):
        root = importlib.import_module(f"democratic_ai.{top}")
        for info in pkgutil.walk_packages(root.__path__, f"democratic_ai.{top}."):
            importlib.import_module(info.name)
    found: set[type[PlatformError]] = set()
    todo = [PlatformError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def test_the_domain_roots_derive_from_platform_error() -> None:
    names = {cls.__name__ for cls in _every_error()}
    assert {"IdentityError", "BillingError", "MeteringError", "ProjectionError", "ApiError"} <= names


def test_no_error_carries_a_status_and_every_code_has_one_in_the_table() -> None:
    for cls in _every_error():
        assert not hasattr(cls, "status"), f"{cls.__module__}.{cls.__name__} carries an HTTP status"
        assert isinstance(cls.code, ErrorCode) and cls.code in STATUS, f"{cls.__name__}: {cls.code!r}"


def test_an_edge_error_takes_its_status_from_the_table() -> None:
    details = {"message": "details may use any key"}
    error = ApiError(ErrorCode.NOT_READY, "not yet", details)
    assert (error.code, error.message, error.details) == (ErrorCode.NOT_READY, "not yet", details)
    assert not hasattr(error, "status") and status_of(error.code) == 503
