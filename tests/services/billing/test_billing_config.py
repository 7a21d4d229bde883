"""Billing settings are checked when a process starts, and every wrong one is one line starting
``dai:`` and a non-zero exit — from ``dai billing``, ``dai gateway`` and ``dai up`` alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from democratic_ai.contracts.billing_events import Seller
from democratic_ai.services.billing import (
    DEFAULT_SELLER,
    BillingConfig,
    InvalidBillingConfig,
    InvalidSeller,
    check_environment,
    load_seller,
)

DAI = str(Path(sys.executable).with_name("dai"))
NUMBER = "T1234567890123"


def test_the_defaults_are_valid() -> None:
    config = check_environment({})
    assert (config.tax_rate, config.close_grace_seconds, config.stripe, config.seller) == (
        BillingConfig().tax_rate,
        3600,
        None,
        DEFAULT_SELLER,
    )


def test_the_seller_comes_from_a_file_and_the_variables_win(tmp_path: Path) -> None:
    seller_file = tmp_path / "seller.json"
    seller_file.write_text(
        json.dumps({"name": "Democratic AI K.K.", "address": "1-2-3 Marunouchi\nTokyo", "registration_number": NUMBER})
    )
    assert load_seller({"DAI_SELLER_FILE": str(seller_file)}) == Seller(
        name="Democratic AI K.K.", address="1-2-3 Marunouchi\nTokyo", registration_number=NUMBER
    )
    assert load_seller({"DAI_SELLER_FILE": str(seller_file), "DAI_SELLER_NAME": "Other K.K."}).name == "Other K.K."
    assert load_seller({"DAI_SELLER_NAME": "Solo", "DAI_SELLER_REGISTRATION_NUMBER": NUMBER}) == Seller(
        name="Solo", registration_number=NUMBER
    )
    assert check_environment({"DAI_SELLER_NAME": "Solo"}).seller == Seller(name="Solo")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DAI_SELLER_REGISTRATION_NUMBER": "1234567890123"}, "not 'T' followed by 13 digits"),
        ({"DAI_SELLER_REGISTRATION_NUMBER": "T123456789012"}, "not 'T' followed by 13 digits"),
        (
            {"DAI_SELLER_REGISTRATION_NUMBER": "T１２３４５６７８９０１２３"},
            "not 'T' followed by 13 digits",
        ),  # full-width
        ({"DAI_SELLER_NAME": " "}, "name must not be empty"),
        ({"DAI_SELLER_NAME": "A\nB"}, "control character"),
        ({"DAI_SELLER_ADDRESS": "x" * 2001}, "at most 2,000"),
        ({"DAI_SELLER_FILE": "/nonexistent/seller.json"}, "cannot read"),
    ],
)
def test_a_bad_seller_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSeller, match=message):
        load_seller(env)
    with pytest.raises(InvalidBillingConfig, match=message):
        check_environment(env)


def test_a_seller_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seller.json"
    path.write_text(json.dumps({"name": "X", "registration": NUMBER}))  # a misspelt key is not ignored
    with pytest.raises(InvalidSeller, match="not a seller document"):
        load_seller({"DAI_SELLER_FILE": str(path)})


def test_a_seller_given_in_code_is_checked_too() -> None:
    with pytest.raises(InvalidBillingConfig, match="13 digits"):
        BillingConfig(seller=Seller(name="X", registration_number="T1"))


def _bad_pricing(tmp_path: Path) -> str:
    path = tmp_path / "pricing.json"
    path.write_text('{"version": 1, "plans": {"starter": {"name": "S", "currency": "JPY", "monthly_price": 4900}}}')
    return str(path)


def _bad_plans(tmp_path: Path) -> str:
    path = tmp_path / "plans.json"
    path.write_text('{"version": 1, "default_plan": "free", "plans": {"free": {"api_calls": {"limit": "many"}}}}')
    return str(path)


BAD = [
    ("DAI_TAX_RATE", "abc", "DAI_TAX_RATE must be a decimal"),
    ("DAI_TAX_RATE", "NaN", "DAI_TAX_RATE must be at least 0"),
    ("DAI_TAX_RATE", "1.5", "DAI_TAX_RATE must be at least 0"),
    ("DAI_BILLING_GRACE_SECONDS", "-1", "DAI_BILLING_GRACE_SECONDS must not be negative"),
    ("DAI_BILLING_GRACE_SECONDS", "an hour", "DAI_BILLING_GRACE_SECONDS must be a whole number"),
    ("DAI_SELLER_REGISTRATION_NUMBER", "T12", "not 'T' followed by 13 digits"),
    ("DAI_PRICING_FILE", "BAD_PRICING", "is invalid"),
    ("DAI_PLANS_FILE", "BAD_PLANS", "the plans file"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_each_setting_error_is_one_sentence(tmp_path: Path, name: str, value: str, message: str) -> None:
    value = {"BAD_PRICING": _bad_pricing, "BAD_PLANS": _bad_plans}.get(value, lambda _: value)(tmp_path)
    with pytest.raises(InvalidBillingConfig, match=message):
        check_environment({name: value})


@pytest.mark.parametrize("command", [["billing", "close-period"], ["gateway"], ["up"]])
@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_dai_says_it_in_one_line_and_exits(
    tmp_path: Path, command: list[str], name: str, value: str, message: str
) -> None:
    """No servers are needed: the settings are checked before anything connects or starts."""
    value = {"BAD_PRICING": _bad_pricing, "BAD_PLANS": _bad_plans}.get(value, lambda _: value)(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAI_", "STRIPE_"))}
    env[name] = value
    if command == ["up"]:
        command = ["up", "--data-dir", str(tmp_path / "data")]
    done = subprocess.run([DAI, *command], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("dai: ") and message in line, line
    assert not (tmp_path / "data").exists()  # dai up started nothing
