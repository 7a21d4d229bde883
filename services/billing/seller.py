"""The seller block of an invoice: who issues it, from the environment or a JSON file.

In Japan a qualified invoice (適格請求書, the インボイス制度 since October 2023) must name its
issuer and the issuer's registration number: ``T`` followed by 13 digits (a company's is its
corporate number, 法人番号). The number is checked for that form when a process starts; whether
the National Tax Agency has issued it is the operator's to know.

    DAI_SELLER_FILE                  a JSON file {"name", "address", "registration_number"}
    DAI_SELLER_NAME                  each overrides the file's field of the same name
    DAI_SELLER_ADDRESS
    DAI_SELLER_REGISTRATION_NUMBER

With none of them set the seller is ``Democratic_AI`` with no address and no number: fine for
trying the platform, not a qualified invoice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from democratic_ai.contracts.billing_events import Seller

__all__ = ["DEFAULT_SELLER", "REGISTRATION_NUMBER", "InvalidSeller", "check_seller", "load_seller"]

DEFAULT_SELLER = Seller(name="Democratic_AI")
REGISTRATION_NUMBER = re.compile(r"T[0-9]{13}")  # 適格請求書発行事業者登録番号: "T" and 13 ASCII digits
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # an address may span lines; nothing else unprintable
_LIMITS = {"name": 200, "address": 2000}


class InvalidSeller(ValueError):
    """The seller configuration breaks a rule; the message names the variable or file."""


class _SellerFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = ""
    address: str = ""
    registration_number: str = ""


def check_seller(seller: Seller, where: str = "the seller") -> Seller:
    """``seller`` if every field is printable, within its length, and the number well formed."""
    for field, limit in _LIMITS.items():
        value = getattr(seller, field)
        if len(value) > limit:
            raise InvalidSeller(f"{where}: {field} is {len(value):,} characters; at most {limit:,}.")
        if _CONTROL.search(value) or (field == "name" and "\n" in value):
            raise InvalidSeller(f"{where}: {field} holds a control character.")
    if not seller.name.strip():
        raise InvalidSeller(f"{where}: the seller's name must not be empty.")
    number = seller.registration_number
    if number and not REGISTRATION_NUMBER.fullmatch(number):
        raise InvalidSeller(
            f"{where}: the registration number {number!r} is not 'T' followed by 13 digits"
            " (e.g. T1234567890123, Japan's qualified-invoice registration number)."
        )
    return seller


def load_seller(env: Mapping[str, str]) -> Seller:
    """The seller of ``DAI_SELLER_FILE`` and the ``DAI_SELLER_*`` variables (which win), checked."""
    fields = {"name": DEFAULT_SELLER.name, "address": "", "registration_number": ""}
    sources = []
    if path := env.get("DAI_SELLER_FILE"):
        try:
            parsed = msgspec.json.decode(Path(path).read_bytes(), type=_SellerFile)
        except OSError as exc:
            raise InvalidSeller(f"DAI_SELLER_FILE: cannot read {path}: {exc.strerror or exc}.") from None
        except msgspec.DecodeError as exc:  # ValidationError included: wrong shape or an unknown key
            raise InvalidSeller(f"DAI_SELLER_FILE {path} is not a seller document ({exc}).") from None
        fields.update({k: v for k, v in msgspec.structs.asdict(parsed).items() if v})
        sources.append(f"DAI_SELLER_FILE {path}")
    for field in fields:
        name = f"DAI_SELLER_{field.upper()}"
        if name in env:
            fields[field] = env[name].strip() if field != "address" else env[name]
            sources.append(name)
    return check_seller(Seller(**fields), " / ".join(sources) or "the default seller")
