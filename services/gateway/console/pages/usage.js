// Usage: the tenant's metered usage by hour, day or month, by metric and capability; CSV of it.
import { api, can } from "../lib/api.js";
import { barChart, lineChart } from "../lib/chart.js";
import { clear, el, field, table } from "../lib/dom.js";
import { formatDate, formatDateTime, formatNumber, t } from "../lib/i18n.js";

const METRICS = ["api_calls", "compute_ms", "bytes_in", "bytes_out"];
const GRANULARITIES = ["hour", "day", "month"];
const MOST_CAPABILITIES = 12; // the bars: one request per capability, so a bounded number

function csv(rows) {
  const cell = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  return rows.map((row) => row.map(cell).join(",")).join("\n") + "\n";
}

function downloadLink(name, rows) {
  const url = URL.createObjectURL(new Blob([csv(rows)], { type: "text/csv" }));
  return el("a", { href: url, download: name, class: "download" }, t("common.download_csv"));
}

export default {
  path: "usage",
  title: "nav.usage",
  visible: () => can("billing:read"),
  async render(main, params) {
    const granularity = el(
      "select",
      { name: "granularity" },
      GRANULARITIES.map((g) => el("option", { value: g, selected: g === (params.get("granularity") || "hour") }, t(`usage.${g}`))),
    );
    const metric = el(
      "select",
      { name: "metric" },
      METRICS.map((m) => el("option", { value: m, selected: m === (params.get("metric") || "api_calls") }, t(`metric.${m}`))),
    );
    let capabilities = [];
    try {
      capabilities = (await api("GET", "/v1/capabilities")).capabilities.map((c) => c.action);
    } catch {
      /* a key may read usage without module:read: the filter then takes any name typed */
    }
    const capability = el(
      "select",
      { name: "capability" },
      el("option", { value: "" }, t("usage.all_capabilities")),
      capabilities.map((c) => el("option", { value: c, selected: c === params.get("capability") }, c)),
    );
    const view = el("div", { class: "usage-view" });
    const form = el(
      "form",
      { class: "toolbar", onsubmit: (event) => (event.preventDefault(), draw()) },
      field(t("usage.granularity"), granularity),
      field(t("usage.metric"), metric),
      field(t("usage.capability"), capability),
      el("button", { type: "submit" }, t("common.refresh")),
    );
    main.append(form, view);

    async function draw() {
      clear(view).append(el("p", {}, t("common.loading")));
      const query = new URLSearchParams({ granularity: granularity.value, metric: metric.value });
      if (capability.value) query.set("capability", capability.value);
      const series = await api("GET", `/v1/usage?${query}`);
      const byOutcome = new Map();
      for (const point of series.usage) {
        if (!byOutcome.has(point.outcome)) byOutcome.set(point.outcome, []);
        byOutcome.get(point.outcome).push([new Date(point.period), point.value]);
      }
      const label = (x) => (granularity.value === "hour" ? formatDateTime(new Date(x), { hour: "2-digit", minute: "2-digit" }) : formatDate(new Date(x)));
      const title = t("usage.chart_title", { metric: t(`metric.${metric.value}`), granularity: t(`usage.${granularity.value}`) });
      const rows = [["period", "metric", "outcome", "value", "events"], ...series.usage.map((p) => [p.period, p.metric, p.outcome, p.value, p.events])];
      clear(view).append(
        el("section", { class: "panel" }, el("h2", {}, title), lineChart(title, [...byOutcome].map(([name, points]) => ({ name: t(`outcome.${name}`), points })), { label, format: (v) => formatNumber(v, { maximumFractionDigits: 1 }), empty: t("usage.nothing") })),
        el(
          "section",
          { class: "panel" },
          el("h2", {}, t("usage.totals")),
          table(
            [t("usage.metric"), t("usage.outcome"), t("usage.value")],
            Object.entries(series.totals).flatMap(([m, outcomes]) => Object.entries(outcomes).map(([o, v]) => [t(`metric.${m}`), t(`outcome.${o}`), formatNumber(v)])),
            t("usage.nothing"),
          ),
          el("p", {}, downloadLink(`usage-${series.tenant_id}-${granularity.value}-${metric.value}.csv`, rows)),
        ),
      );
      if (!capability.value && capabilities.length) {
        const panel = el("section", { class: "panel" }, el("h2", {}, t("usage.by_capability")), el("p", {}, t("common.loading")));
        view.append(panel);
        const totals = await Promise.all(
          capabilities.slice(0, MOST_CAPABILITIES).map(async (c) => {
            const q = new URLSearchParams(query);
            q.set("capability", c);
            const answer = await api("GET", `/v1/usage?${q}`);
            return { label: c, value: Object.values(answer.totals[metric.value] || {}).reduce((a, b) => a + b, 0) };
          }),
        );
        const bars = totals.filter((b) => b.value > 0).sort((a, b) => b.value - a.value);
        panel.replaceChildren(el("h2", {}, t("usage.by_capability")), barChart(t("usage.by_capability"), bars, { format: (v) => formatNumber(v), empty: t("usage.nothing") }));
      }
    }
    await draw();
  },
};
