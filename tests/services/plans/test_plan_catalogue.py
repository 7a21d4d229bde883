"""One catalogue of plans: limits (plans.json) and prices (pricing.json), read by one loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from democratic_ai.services.plans import PLANS_ENV, PRICING_ENV, InvalidPlans, InvalidPricing, load_plans

from support.paths import REPO

PACKAGED = REPO / "schemas" / "json"


def test_each_plan_has_its_limits_and_its_price() -> None:
    book = load_plans(env={})
    starter = book.plans["starter"]
    assert starter.api_calls is not None and starter.api_calls.limit == 3000
    assert starter.terms is not None and starter.terms is book.terms("starter")
    assert str(starter.terms.monthly_price) == "4900"
    assert book.plan_of("system").name == "unlimited" and book.plans["unlimited"].terms is None
    assert set(book.prices) == {"free", "starter", "pro", "enterprise"}
    with pytest.raises(KeyError):
        book.terms("unlimited")  # not for sale


def test_both_variables_are_honoured(tmp_path: Path) -> None:
    limits = json.loads((PACKAGED / "plans.json").read_text())
    limits["plans"]["starter"]["api_calls"]["limit"] = 7
    prices = json.loads((PACKAGED / "pricing.json").read_text())
    prices["plans"]["starter"]["monthly_price"] = "5000"
    (tmp_path / "plans.json").write_text(json.dumps(limits))
    (tmp_path / "pricing.json").write_text(json.dumps(prices))
    book = load_plans(env={PLANS_ENV: str(tmp_path / "plans.json"), PRICING_ENV: str(tmp_path / "pricing.json")})
    starter = book.plans["starter"]
    assert starter.api_calls is not None and starter.api_calls.limit == 7
    assert str(book.terms("starter").monthly_price) == "5000"


def test_a_price_for_a_plan_without_limits_is_for_sale_but_no_tenant_is_put_on_it(tmp_path: Path) -> None:
    """A plans file of one's own may define fewer plans than the packaged prices: the gateway still
    starts, and metering keeps a subscriber of such a plan on its current limits (it logs why)."""
    prices = json.loads((PACKAGED / "pricing.json").read_text())
    prices["plans"]["gold"] = dict(prices["plans"]["pro"], name="Gold")
    (tmp_path / "pricing.json").write_text(json.dumps(prices))
    book = load_plans(pricing_file=tmp_path / "pricing.json", env={})
    assert book.terms("gold").name == "Gold" and "gold" not in book.plans
    with pytest.raises(InvalidPlans, match="there is no plan 'gold'"):
        book.assign("acme", "gold")


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(InvalidPlans, match=f"cannot read the plans file {tmp_path}/missing.json"):
        load_plans(env={PLANS_ENV: str(tmp_path / "missing.json")})
    (tmp_path / "pricing.json").write_text("{not json")
    with pytest.raises(InvalidPricing, match=r"the pricing file .* is not JSON"):
        load_plans(env={PRICING_ENV: str(tmp_path / "pricing.json")})
