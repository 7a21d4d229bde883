"""Every package's public surface, exactly (as httpx's tests/test_exported_members.py does).

A name added to or dropped from a package's ``__all__`` must be added to or dropped from the list
below too, so a change of the public surface shows in review. Every name listed must exist, and
every public name a package binds (other than its submodules) must be listed: nothing is exported
by accident, nothing is hidden by one. Modules' own ``__all__`` must name things that exist.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

PUBLIC: dict[str, list[str]] = {
    "contracts": [
        "Context",
        "decode",
        "DEFAULT_TTL_SECONDS",
        "ensure_streams",
        "Error",
        "error_details",
        "error_reply",
        "ErrorCode",
        "JSON",
        "MCPMessage",
        "MessageType",
        "new_event",
        "new_request",
        "PlatformError",
        "reply",
        "STREAMS",
    ],
    "hub": ["CallStream", "Hub", "InvalidManifest", "PresenceIndex", "Registrar", "RegistryIndex", "Router"],
    "schemas": [
        "app_dsn",
        "APP_ROLE",
        "check_app_role",
        "create_pool",
        "DatabaseOutage",
        "DatabaseUnreachable",
        "ensure_app_role",
        "is_unreachable",
        "migrate",
        "migrations",
        "on_database",
        "partition_checkpoint",
        "platform_transaction",
        "read_checkpoint",
        "RENAMED",
        "tenant_transaction",
        "UnsafeRole",
        "wait_for_checkpoint",
    ],
    "sdk": [
        "CallError",
        "capability",
        "Chunk",
        "Client",
        "DaiError",
        "Event",
        "event_handler",
        "HttpClient",
        "Module",
        "ModuleConfig",
        "SchemaError",
    ],
    "sdk.examples": ["ImageTools", "TextTools"],
    "projections": [
        "AsOfResult",
        "BillingProjection",
        "CallsProjection",
        "Checkpoints",
        "DeadLetter",
        "IdentityProjection",
        "LogRange",
        "LogReader",
        "MissingReadModel",
        "Projection",
        "projection_status",
        "ProjectionError",
        "ProjectionRunner",
        "PROJECTIONS",
        "ProjectionStatus",
        "ReadModelChanged",
        "rebuild",
        "rebuild_as_of",
        "RebuildInProgress",
        "RecoveryConfig",
        "RegistryProjection",
        "retry",
        "RetryResult",
        "Share",
        "sequence_at",
        "TableComparison",
        "UnfoldableEvent",
        "UsageProjection",
        "UsageRecovery",
        "verify",
    ],
    "services": [],
    "services.identity": [
        "allows",
        "authenticate",
        "CannotUnseal",
        "check_kek",
        "Conflict",
        "ensure_bootstrap",
        "expiry_of",
        "Forbidden",
        "generate_kek_file",
        "IdentityError",
        "IdentityIndex",
        "IdentityService",
        "Invalid",
        "IssuedKey",
        "KekUnavailable",
        "KeyEncryptionKey",
        "KeyRing",
        "load_kek",
        "ModuleCredential",
        "ModuleState",
        "new_module_credential",
        "NotFound",
        "parse_module_credential",
        "permissions_of",
        "Principal",
        "recheck",
        "Role",
        "ROLE_PERMISSIONS",
        "rotate_signing_key",
        "SealingError",
        "signing_key_bucket",
        "Throttled",
        "Tokens",
        "Unauthenticated",
        "user_key_bucket",
        "Unavailable",
        "UserKeyStore",
    ],
    "services.plans": [
        "API_KEY_WINDOW_SECONDS",
        "BandwidthLimit",
        "BILLED_METRICS",
        "CallLimit",
        "ComputeLimit",
        "INTERVALS",
        "InvalidPlans",
        "InvalidPricing",
        "load_plans",
        "Plan",
        "PlanBook",
        "PlanResolver",
        "PLANS_ENV",
        "PRICING_ENV",
        "StorageLimit",
    ],
    "services.billing": [
        "BadSignature",
        "BillingConfig",
        "BillingError",
        "BillingLog",
        "BillingService",
        "build_invoice",
        "check_environment",
        "CheckoutSession",
        "Closed",
        "compute_invoice",
        "Conflict",
        "DEFAULT_SELLER",
        "DEFAULT_TIME_ZONE",
        "duration",
        "fold_subscription",
        "format_money",
        "format_price",
        "Invalid",
        "InvalidBillingConfig",
        "InvalidSeller",
        "invoice_id",
        "load_seller",
        "NotFound",
        "Payments",
        "PlanPreview",
        "PostgresUsageTotals",
        "render_invoice",
        "round_line",
        "StripeBilling",
        "StripeConfig",
        "StripeDisabled",
        "StripeFailed",
        "Subscription",
        "tax_amount",
        "Tenure",
        "usage_window",
        "UsageTotals",
        "UsageUnavailable",
    ],
    "services.metering": [
        "Admission",
        "AdmissionConfig",
        "AdmissionUnavailable",
        "Decision",
        "FixedWindow",
        "GATEWAY",
        "Grant",
        "InvalidPlans",
        "is_metered",
        "LeakyBucket",
        "load_plans",
        "Metering",
        "MeteringConfig",
        "MeteringError",
        "Plan",
        "PlanBook",
        "PolicyState",
        "PublisherConfig",
        "QuotaExceeded",
        "RateLimiter",
        "SlidingLog",
        "TokenBucket",
        "usage_of",
        "UsagePublisher",
    ],
    "services.busauth": [
        "ACCOUNT",
        "BusAuthorizer",
        "inbox_prefix",
        "InvalidClaims",
        "module_permissions",
        "PLATFORM_TENANT",
        "Signer",
    ],
    "services.gateway": ["body_ceiling_from_env", "create_app", "create_runner", "GatewayConfig"],
    "ops": [],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_is_exactly_the_public_surface(package: str) -> None:
    module = importlib.import_module(f"democratic_ai.{package}")
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{package}.__all__ names something twice"
    assert sorted(exported) == sorted(PUBLIC[package])
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not have: {missing}"
    bound = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and name != "annotations" and not isinstance(value, types.ModuleType)
    }
    assert bound <= set(exported), f"{package} binds public names it does not export: {sorted(bound - set(exported))}"


def test_every_package_is_listed() -> None:
    packages = set()
    for top in ("contracts", "hub", "schemas", "sdk", "projections", "services", "ops"):
        root = importlib.import_module(f"democratic_ai.{top}")
        packages.add(top)
        packages |= {
            info.name.removeprefix("democratic_ai.")
            for info in pkgutil.walk_packages(root.__path__, f"democratic_ai.{top}.")
            if info.ispkg
        }
    assert packages == set(PUBLIC)


def _modules() -> list[str]:
    names = []
    for top in ("contracts", "hub", "schemas", "sdk", "projections", "services", "ops"):
        root = importlib.import_module(f"democratic_ai.{top}")
        names += [info.name for info in pkgutil.walk_packages(root.__path__, f"democratic_ai.{top}.")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_every_module_exports_only_what_it_has(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
