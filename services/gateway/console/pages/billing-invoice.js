// An invoice drawn in the page from the API's JSON (never its HTML in a frame: the CSP forbids
// frames, and nothing the API sends becomes markup), and its download in the formats offered.
import { apiText } from "../lib/api.js";
import { el, table, toast } from "../lib/dom.js";
import { formatDate, formatDateTime, formatMinorUnits, formatNumber, formatPrice, t } from "../lib/i18n.js";

const UNITS = ["call", "hour", "GB", "month", "year"];

/** A unit as the user's language writes it; a unit the console does not know, as the API sent it. */
export function unitName(unit) {
  return UNITS.includes(unit) ? t(`billing.unit.${unit}`) : unit;
}

/** The month an invoice is for (`2025-01`) and, smaller, its bounds in the user's time zone. */
export function periodText(invoice) {
  // period_end is the first instant of the next month: the last day is the one before it.
  const last = new Date(new Date(invoice.period_end).getTime() - 1);
  return el("span", {}, invoice.period, " ", el("small", { class: "muted" }, `${formatDate(invoice.period_start)} – ${formatDate(last)}`));
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
    `${formatNumber(line.quantity, { maximumFractionDigits: 6 })} ${unitName(line.unit)}`,
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
  return el("div", { class: "invoice-lines" }, lines, totals);
}

function save(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name, class: "visually-hidden" }, name);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Buttons that download `path` as the API offers it (HTML or JSON); the request carries the token. */
export function downloads(path, name) {
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
  );
}

/** One issued invoice: who issued it, its dates and status, its lines, its payments. */
export function invoiceDetail(invoice) {
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
    downloads(`/v1/invoices/${encodeURIComponent(invoice.invoice_id)}`, invoice.invoice_id),
  );
}
