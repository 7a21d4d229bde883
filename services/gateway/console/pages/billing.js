// Billing: the tenant's plan and the plans offered; choosing one shows what it does to this
// month's invoice (the API's preview, computed by the code that issues invoices) before it is
// confirmed; the month's invoice so far; the invoices issued, each opened in the page.
import { ApiError, api, can } from "../lib/api.js";
import { clear, confirmDialog, el, field, table, toast } from "../lib/dom.js";
import { formatDate, formatDateTime, formatMinorUnits, formatNumber, formatPrice, t, timeZone } from "../lib/i18n.js";
import { downloads, invoiceDetail, invoiceLines, labelled, periodText, statusBadge, unitName } from "./billing-invoice.js";

const INTERVALS = ["month", "year"];
const METRICS = ["api_calls", "compute_ms", "storage_bytes"];

function problem(error) {
  const message = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error.message || error);
  return el("p", { class: "problem", role: "alert" }, t("common.error", { message }));
}

function allowance(terms) {
  return METRICS.filter((m) => terms.usage[m]).map((m) => {
    const price = terms.usage[m];
    const included = `${formatNumber(price.included)} ${unitName(price.unit, price.included)}`;
    const over =
      price.overage_price === null
        ? t("billing.not_billed_over")
        : t("billing.per_unit", { price: formatPrice(price.overage_price, terms.currency), unit: unitName(price.unit, 1) });
    return el("li", {}, t(`billing.metric.${m}`), ": ", included, " · ", over);
  });
}

function planPrice(terms, interval) {
  const price = interval === "year" ? terms.yearly_price : terms.monthly_price;
  return t(`billing.price_per_${interval}`, { price: formatPrice(price, terms.currency) });
}

function currentPlan(billing, refresh) {
  const sub = billing.subscription;
  if (!sub || sub.status !== "active") {
    return el("p", { class: "empty" }, sub ? t("billing.cancelled_on", { date: formatDate(sub.cancelled_at) }) : t("billing.no_plan"));
  }
  return el(
    "div",
    { class: "current-plan" },
    el("p", { class: "plan-name" }, el("strong", {}, sub.plan_name), " ", el("span", { class: "badge good" }, t(`billing.interval.${sub.interval}`))),
    el("p", {}, planPrice(sub.terms, sub.interval)),
    el("ul", { class: "allowance" }, allowance(sub.terms)),
    el(
      "p",
      { class: "muted" },
      t("billing.since", { date: formatDate(sub.current_since) }),
      " · ",
      t("billing.time_zone_is", { zone: sub.time_zone }),
    ),
    can("billing:update") ? el("div", { class: "actions" }, cancelButton(billing, refresh)) : null,
  );
}

/** A plan as a card: its name, prices and allowance; with `choice`, a radio button to choose it. */
function planCard(terms, choice) {
  const id = `plan-${terms.plan_id}`;
  const name = el("span", { class: "plan-card-name", id: `${id}-name` }, terms.name);
  const details = el(
    "span",
    { class: "plan-card-details", id: `${id}-details` },
    el("span", { class: "plan-card-price" }, planPrice(terms, "month")),
    el("span", { class: "muted" }, planPrice(terms, "year")),
    el("ul", { class: "allowance" }, allowance(terms)),
  );
  if (!choice) return el("div", { class: "card plan-card" }, el("span", { class: "plan-card-head" }, name), details);
  const radio = el("input", {
    type: "radio",
    name: "plan",
    value: terms.plan_id,
    checked: choice.checked || null,
    "aria-labelledby": `${id}-name`,
    "aria-describedby": `${id}-details`,
  });
  return el("label", { class: "card plan-card choosable" }, el("span", { class: "plan-card-head" }, radio, name), details);
}

function catalogue(plans) {
  return el("div", { class: "plan-cards" }, plans.map((terms) => planCard(terms, null)));
}

/** The effect of a change as the API previews it: both totals, the difference, the invoice to come. */
function effect(preview, plans, subscription) {
  const chosen = plans.find((p) => p.plan_id === preview.plan_id);
  const name = chosen ? chosen.name : preview.plan_id;
  const changed = preview.changed;
  const money = (minor) => formatMinorUnits(minor, changed.currency);
  if (!preview.changes) return [el("p", {}, t("billing.already_on", { plan: name }))];
  const facts = [];
  if (preview.unchanged) {
    facts.push([t("billing.without_change", { plan: subscription.plan_name, period: changed.period }), money(preview.unchanged.total)]);
  }
  facts.push([t("billing.with_change", { plan: name, period: changed.period }), money(changed.total)]);
  if (preview.unchanged) {
    const kind = preview.difference > 0 ? "charge" : preview.difference < 0 ? "credit" : "same";
    facts.push([t(`billing.effect_${kind}`), el("strong", { class: `effect-${kind}` }, money(Math.abs(preview.difference)))]);
  }
  return [
    el("p", {}, t("billing.effect_intro", { plan: name, interval: t(`billing.interval.${preview.interval}`) })),
    el("dl", { class: "facts effect" }, facts.map(([label, value]) => [el("dt", {}, label), el("dd", {}, value)])),
    el("h3", {}, t("billing.next_invoice", { period: changed.period })),
    invoiceLines(changed, t("billing.next_invoice", { period: changed.period })),
    el("p", { class: "muted" }, t("billing.effect_note")),
  ];
}

function changeForm(billing, refresh) {
  const sub = billing.subscription && billing.subscription.status === "active" ? billing.subscription : null;
  const choices = billing.plans.map((terms) => planCard(terms, { checked: sub ? terms.plan_id === sub.plan_id : false }));
  const interval = el(
    "select",
    { name: "interval" },
    INTERVALS.map((i) => el("option", { value: i, selected: sub ? i === sub.interval : i === "month" }, t(`billing.interval.${i}`))),
  );
  // The billing time zone is set by the first subscription and kept: asked only then.
  const zone = sub || billing.subscription ? null : el("input", { name: "time_zone", value: timeZone(), autocomplete: "off" });
  const result = el("div", { class: "preview", "aria-live": "polite" });
  let asked = 0; // the latest preview asked for: an older answer arriving late is dropped

  async function preview() {
    const plan = form.querySelector('input[name="plan"]:checked');
    if (!plan) return;
    const query = new URLSearchParams({ plan: plan.value, interval: interval.value });
    if (zone && zone.value.trim()) query.set("time_zone", zone.value.trim());
    const mine = ++asked;
    clear(result).append(el("p", {}, t("common.loading")));
    let answer;
    try {
      answer = await api("GET", `/v1/billing/plan/preview?${query}`);
    } catch (error) {
      if (mine === asked) clear(result).append(problem(error));
      return;
    }
    if (mine !== asked) return;
    const confirm = el(
      "button",
      {
        type: "button",
        onclick: async () => {
          confirm.disabled = true;
          try {
            const body = { plan: answer.plan_id, interval: answer.interval };
            if (zone && zone.value.trim()) body.time_zone = zone.value.trim();
            const updated = await api("PUT", "/v1/billing/plan", body);
            toast(t("billing.changed", { plan: updated.subscription ? updated.subscription.plan_name : answer.plan_id }), "ok");
            await refresh();
          } catch (error) {
            confirm.disabled = false;
            clear(result).append(problem(error));
          }
        },
      },
      t("billing.confirm", { plan: (billing.plans.find((p) => p.plan_id === answer.plan_id) || { name: answer.plan_id }).name }),
    );
    clear(result).append(...effect(answer, billing.plans, sub), answer.changes ? el("div", { class: "actions" }, confirm) : null);
  }

  const form = el(
    "form",
    { class: "plan-form", onsubmit: (event) => (event.preventDefault(), preview()), onchange: (event) => event.target !== zone && preview() },
    el("fieldset", { class: "plan-choices" }, el("legend", {}, t("billing.choose")), el("div", { class: "plan-cards" }, choices)),
    el("div", { class: "toolbar" }, field(t("billing.interval"), interval), zone ? field(t("billing.time_zone"), zone, t("billing.time_zone_hint")) : null),
    el("button", { type: "submit", class: "secondary" }, t("billing.preview")),
    result,
  );
  return form;
}

function cancelButton(billing, refresh) {
  if (!billing.subscription || billing.subscription.status !== "active") return null;
  return el(
    "button",
    {
      type: "button",
      class: "danger",
      onclick: async () => {
        const ok = await confirmDialog(t("billing.cancel_question", { plan: billing.subscription.plan_name }), t("billing.cancel"), t("common.cancel"));
        if (!ok) return;
        try {
          await api("DELETE", "/v1/billing/plan");
          toast(t("billing.cancelled"), "ok");
          await refresh();
        } catch (error) {
          toast(t("common.error", { message: error.message || String(error) }), "error");
        }
      },
    },
    t("billing.cancel"),
  );
}

async function upcoming(billing) {
  const box = el("section", { class: "panel", "aria-labelledby": "upcoming-title" }, el("h2", { id: "upcoming-title" }, t("billing.upcoming")));
  if (!billing.subscription) {
    box.append(el("p", { class: "empty" }, t("billing.nothing_accrues")));
    return box;
  }
  try {
    const invoice = await api("GET", "/v1/invoices/upcoming");
    box.append(
      el("p", { class: "muted" }, periodText(invoice)),
      el("p", { class: "muted" }, t("billing.as_of", { date: formatDateTime(invoice.as_of) })),
      invoiceLines(invoice, t("billing.upcoming")),
      downloads("/v1/invoices/upcoming", `${invoice.invoice_id}-upcoming`),
    );
  } catch (error) {
    box.append(error instanceof ApiError && error.status === 404 ? el("p", { class: "empty" }, t("billing.nothing_accrues")) : problem(error));
  }
  return box;
}

export default {
  path: "billing",
  title: "nav.billing",
  visible: () => can("billing:read"),
  async render(main, params) {
    const body = el("div", { class: "billing" });
    const opened = el("section", { class: "panel invoice-panel", hidden: true, "aria-labelledby": "invoice-title" });
    main.append(body);

    async function open(invoiceId, focus = true) {
      opened.hidden = false;
      clear(opened).append(el("h2", { id: "invoice-title", tabindex: "-1" }, t("billing.invoice", { id: invoiceId })), el("p", {}, t("common.loading")));
      const url = new URL(location.href);
      url.searchParams.set("invoice", invoiceId);
      history.replaceState({}, "", url);
      try {
        const invoice = await api("GET", `/v1/invoices/${encodeURIComponent(invoiceId)}`);
        opened.lastChild.replaceWith(
          invoiceDetail(invoice, el("button", { type: "button", class: "secondary", onclick: () => closeInvoice() }, t("billing.close_invoice"))),
        );
      } catch (error) {
        opened.lastChild.replaceWith(problem(error));
      }
      if (focus) opened.querySelector("h2").focus();
    }

    function closeInvoice() {
      opened.hidden = true;
      clear(opened);
      const url = new URL(location.href);
      url.searchParams.delete("invoice");
      history.replaceState({}, "", url);
    }

    async function draw() {
      const billing = await api("GET", "/v1/billing/plan");
      billing.plans.sort((a, b) => Number(a.monthly_price) - Number(b.monthly_price)); // cheapest first, as read
      const plan = el("section", { class: "panel", "aria-labelledby": "plan-title" }, el("h2", { id: "plan-title" }, t("billing.your_plan")), currentPlan(billing, draw));
      if (can("billing:update")) {
        plan.append(el("h3", {}, t("billing.change")), changeForm(billing, draw));
      } else {
        plan.append(el("h3", {}, t("billing.plans")), catalogue(billing.plans));
      }
      const { invoices } = await api("GET", "/v1/invoices");
      const past = el(
        "section",
        { class: "panel", "aria-labelledby": "invoices-title" },
        el("h2", { id: "invoices-title" }, t("billing.invoices")),
        invoices.length
          ? labelled(
              table(
                [t("billing.number"), t("billing.period"), t("billing.total"), t("billing.status")],
                invoices.map((invoice) => [
                  el("button", { type: "button", class: "link", onclick: () => open(invoice.invoice_id) }, invoice.invoice_id),
                  periodText(invoice),
                  formatMinorUnits(invoice.total, invoice.currency),
                  statusBadge(invoice.status),
                ]),
              ),
            )
          : el("p", { class: "empty" }, t("billing.no_invoices")),
      );
      clear(body).append(plan, await upcoming(billing), past, opened);
    }

    await draw();
    if (params.get("invoice")) await open(params.get("invoice"), false);
  },
};
