// An invoice drawn in the page from the API's JSON (never its HTML in a frame: the CSP forbids
// frames, and nothing the API sends becomes markup), and its download in the formats offered.
import { apiText } from "../lib/api.js";
import { el, table, toast } from "../lib/dom.js";
import { formatDateTime, formatMinorUnits, formatNumber, formatPrice, locale, t } from "../lib/i18n.js";

const UNITS = ["call", "hour", "GB", "month", "year"];

/** A unit as the user's language writes it for `count` of them; one the console does not know, as sent. */
export function unitName(unit, count = 2) {
  if (!UNITS.includes(unit)) return unit;
  const one = new Intl.PluralRules(locale()).select(Number(count)) === "one";
  return t(`billing.${one ? "unit_one" : "unit"}.${unit}`);
}

/** The month an invoice is for (`2025-01`, in the tenant's billing time zone) and, smaller, when it
 * begins and ends in the user's time zone — with the hour, since the two zones may differ. */
export function periodText(invoice) {
  const bounds = `${formatDateTime(invoice.period_start)} – ${formatDateTime(invoice.period_end)}`;
  return el("span", { class: "period" }, invoice.period, " ", el("small", { class: "muted" }, bounds));
}

/** Label each cell with its column's heading, for the stacked layout of narrow screens (console.css). */
export function labelled(wrap) {
  const headings = [...wrap.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of wrap.querySelectorAll("tbody tr")) {
    [...row.children].forEach((cell, n) => cell.setAttribute("data-label", headings[n] || ""));
  }
  wrap.classList.add("stacked");
  return wrap;
}

export function statusBadge(status) {
  const kind = { paid: "good", payment_failed: "bad" }[status] || "";
  return el("span", { class: `badge ${kind}`.trim() }, t(`billing.status.${status}`));
}

/** The lines of an invoice (issued, upcoming or previewed), then subtotal, tax and total. */
export function invoiceLines(invoice, caption) {
  const money = (minor) => formatMinorUnits(minor, invoice.currency);
  const rows = invoice.lines.map((line) => [
    line.description,
    `${formatNumber(line.quantity, { maximumFractionDigits: 6 })} ${unitName(line.unit, line.quantity)}`,
    formatPrice(line.unit_price, invoice.currency),
    el("span", { class: "amount" }, money(line.amount)),
  ]);
  const taxed = Number(invoice.tax_rate) > 0 || invoice.tax > 0;
  const totals = el(
    "dl",
    { class: "totals" },
    el("dt", {}, t("billing.subtotal")),
    el("dd", {}, money(invoice.subtotal)),
    taxed ? el("dt", {}, t("billing.tax", { rate: formatNumber(invoice.tax_rate, { style: "percent", maximumFractionDigits: 2 }) })) : null,
    taxed ? el("dd", {}, money(invoice.tax)) : null,
    el("dt", { class: "total" }, t("billing.total")),
    el("dd", { class: "total" }, money(invoice.total)),
  );
  const lines = table([t("billing.line"), t("billing.quantity"), t("billing.unit_price"), t("billing.amount")], rows, t("billing.no_lines"));
  const tableNode = lines.querySelector("table");
  if (tableNode && caption) tableNode.prepend(el("caption", { class: "visually-hidden" }, caption));
  return el("div", { class: "invoice-lines" }, tableNode ? labelled(lines) : lines, totals);
}

function save(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name, class: "visually-hidden" }, name);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Buttons that download `path` as the API offers it (HTML or JSON), then `more`; the request carries the token. */
export function downloads(path, name, ...more) {
  const button = (format, type, label) =>
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          const pressed = event.currentTarget;
          try {
            save(`${name}.${format}`, type, await apiText(`${path}?format=${format}`, type));
          } catch (error) {
            toast(t("common.error", { message: error.message || String(error) }), "error");
          } finally {
            pressed.disabled = false;
          }
        },
      },
      label,
    );
  return el(
    "div",
    { class: "actions" },
    button("html", "text/html", t("billing.download_html")),
    button("json", "application/json", t("billing.download_json")),
    more,
  );
}

/** One issued invoice: who issued it, its dates and status, its lines, its payments; `more` are actions. */
export function invoiceDetail(invoice, ...more) {
  const facts = [
    [t("billing.period"), periodText(invoice)],
    [t("billing.issued"), formatDateTime(invoice.issued_at)],
    [t("billing.status"), statusBadge(invoice.status)],
    invoice.paid_at ? [t("billing.paid_at"), formatDateTime(invoice.paid_at)] : null,
    invoice.seller ? [t("billing.seller"), invoice.seller.name] : null,
    invoice.seller && invoice.seller.registration_number ? [t("billing.registration"), invoice.seller.registration_number] : null,
  ].filter(Boolean);
  const payments = invoice.payments || [];
  return el(
    "div",
    { class: "invoice" },
    el("dl", { class: "facts" }, facts.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
    invoiceLines(invoice, t("billing.lines_of", { id: invoice.invoice_id })),
    payments.length
      ? [
          el("h3", {}, t("billing.payments")),
          table(
            [t("billing.paid_at"), t("billing.outcome"), t("billing.amount")],
            payments.map((p) => [formatDateTime(p.at), t(`billing.payment.${p.outcome}`), formatMinorUnits(p.amount, p.currency)]),
          ),
        ]
      : null,
    downloads(`/v1/invoices/${encodeURIComponent(invoice.invoice_id)}`, invoice.invoice_id, more),
  );
}
