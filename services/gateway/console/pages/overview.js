// Overview: calls per minute (live), error rate, latency per capability, spend and limits — as charts.
import { api, can, events } from "../lib/api.js";
import { barChart, lineChart } from "../lib/chart.js";
import { clear, el } from "../lib/dom.js";
import { formatDateTime, formatMinorUnits, formatNumber, t } from "../lib/i18n.js";

const MINUTES = 60;

async function optional(request) {
  try {
    return await request;
  } catch (error) {
    if (error.status === 403 || error.status === 404) return null; // not this user's to see, or nothing yet
    throw error;
  }
}

/** The month's upcoming invoice, for a tenant on a plan (one without has no invoice to come). */
async function spendSoFar() {
  const plan = await optional(api("GET", "/v1/billing/plan"));
  return plan && plan.subscription ? optional(api("GET", "/v1/invoices/upcoming")) : null;
}

function card(label, value, note = "") {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), note ? el("div", { class: "label" }, note) : null);
}

function percent(part, whole) {
  return whole ? formatNumber(part / whole, { style: "percent", maximumFractionDigits: 1 }) : "—";
}

export default {
  path: "overview",
  title: "nav.overview",
  visible: () => can("tenant:read"),
  async render(main) {
    const [stats, upcoming, limits] = await Promise.all([
      can("billing:read") ? optional(api("GET", `/v1/calls/stats?minutes=${MINUTES}`)) : null,
      can("billing:read") ? spendSoFar() : null,
      can("billing:read") || can("module:use") ? optional(api("GET", "/v1/usage/limits")) : null,
    ]);
    const cards = el("div", { class: "cards" });
    const perMinute = el("section", { class: "panel" });
    const latency = el("section", { class: "panel" });
    const left = el("section", { class: "panel" });
    main.append(cards, perMinute, latency, left);

    // Minute buckets, oldest first: the stats' window, then whatever the live feed adds.
    const minutes = new Map((stats ? stats.per_minute : []).map((m) => [Date.parse(m.minute), { calls: m.calls, errors: m.errors }]));
    const total = stats ? { ...stats.total } : null;

    function drawCards() {
      clear(cards);
      if (total) {
        cards.append(
          card(t("overview.calls_hour"), formatNumber(total.calls)),
          card(t("overview.error_rate"), percent(total.errors, total.calls), t("overview.errors", { count: formatNumber(total.errors) })),
          card(t("overview.p95"), total.p95_ms == null ? "—" : `${formatNumber(total.p95_ms, { maximumFractionDigits: 0 })} ms`, total.p50_ms == null ? "" : t("overview.p50", { ms: formatNumber(total.p50_ms, { maximumFractionDigits: 0 }) })),
        );
      }
      if (upcoming) {
        cards.append(card(t("overview.spend"), formatMinorUnits(upcoming.total, upcoming.currency), t("overview.as_of", { when: formatDateTime(upcoming.as_of) })));
      }
    }

    function drawPerMinute() {
      const now = Math.floor(Date.now() / 60000) * 60000;
      for (const key of [...minutes.keys()]) if (key < now - (MINUTES - 1) * 60000) minutes.delete(key);
      for (let m = now - (MINUTES - 1) * 60000; m <= now; m += 60000) if (!minutes.has(m)) minutes.set(m, { calls: 0, errors: 0 });
      const sorted = [...minutes].sort((a, b) => a[0] - b[0]);
      const title = t("overview.per_minute");
      clear(perMinute).append(
        el("h2", {}, title),
        lineChart(
          title,
          [
            { name: t("overview.series_calls"), points: sorted.map(([m, v]) => [m, v.calls]) },
            { name: t("overview.series_errors"), points: sorted.map(([m, v]) => [m, v.errors]) },
          ],
          { label: (x) => formatDateTime(new Date(x), { hour: "2-digit", minute: "2-digit" }), format: (v) => formatNumber(v, { maximumFractionDigits: 1 }) },
        ),
      );
    }

    drawCards();
    if (stats) {
      drawPerMinute();
      const measured = stats.capabilities.filter((c) => c.p95_ms != null).sort((a, b) => b.p95_ms - a.p95_ms);
      const title = t("overview.latency");
      latency.append(
        el("h2", {}, title),
        barChart(
          title,
          measured.map((c) => ({ label: c.capability, value: c.p95_ms, note: t("overview.latency_note", { p50: formatNumber(c.p50_ms, { maximumFractionDigits: 0 }), rate: percent(c.calls - c.errors, c.calls) }) })),
          { format: (v) => `${formatNumber(v, { maximumFractionDigits: 0 })} ms`, empty: t("overview.no_calls") },
        ),
      );
    } else {
      perMinute.remove();
      latency.remove();
    }
    if (limits && limits.limits.length) {
      const title = t("overview.limits", { plan: limits.plan });
      left.append(
        el("h2", {}, title),
        barChart(
          title,
          limits.limits.map((l) => ({ label: t(`overview.limit.${l.name}`), value: l.quota ? (100 * l.remaining) / l.quota : 0, note: `(${formatNumber(l.remaining)} / ${formatNumber(l.quota)} ${l.unit})` })),
          { format: (v) => `${formatNumber(v, { maximumFractionDigits: 0 })} %` },
        ),
      );
    } else {
      left.remove();
    }

    if (!stats) return undefined;
    // Live: each call as it ends adds to its minute (and the hour's totals).
    const controller = new AbortController();
    let pending = false;
    events("/v1/calls/live", {
      signal: controller.signal,
      onEvent: (name, call) => {
        if (name !== "call") return;
        const minute = Math.floor(Date.parse(call.ended_at || call.at) / 60000) * 60000;
        const bucket = minutes.get(minute) || { calls: 0, errors: 0 };
        bucket.calls += 1;
        total.calls += 1;
        if (call.outcome !== "success") {
          bucket.errors += 1;
          total.errors += 1;
        }
        minutes.set(minute, bucket);
        if (!pending) {
          pending = true;
          requestAnimationFrame(() => {
            pending = false;
            drawPerMinute();
            drawCards();
          });
        }
      },
    }).catch((error) => {
      if (error.name !== "AbortError") perMinute.append(el("p", { class: "problem" }, t("overview.live_lost", { message: error.message })));
    });
    return () => controller.abort();
  },
};
