// Live calls: the tenant's calls as they happen (from the MCP records), filterable; each opens to
// its request, answer, timing and metering.
import { api, can, events } from "../lib/api.js";
import { clear, el, field, table } from "../lib/dom.js";
import { formatDateTime, formatNumber, t } from "../lib/i18n.js";

const OUTCOMES = ["success", "failed", "timeout", "cancelled", "rate_limited"];
const SHOWN = 100; // rows kept on screen; older ones scroll off

function outcomeBadge(outcome) {
  if (!outcome) return el("span", { class: "badge" }, t("calls.running"));
  return el("span", { class: `badge ${outcome === "success" ? "good" : "bad"}` }, t(`outcome.${outcome}`));
}

function payloadView(label, record) {
  if (!record) return el("p", { class: "empty" }, t("calls.not_kept", { what: label }));
  const shown = record.data !== null && record.data !== undefined ? JSON.stringify(record.data, null, 2) : record.error ? JSON.stringify(record.error, null, 2) : record.text;
  return el(
    "div",
    {},
    el("h3", {}, label, " ", el("span", { class: "muted" }, t("calls.record", { type: record.type, size: formatNumber(record.size), sequence: record.sequence }))),
    record.truncated ? el("p", { class: "muted" }, t("calls.truncated")) : null,
    el("pre", { "aria-label": label }, shown),
  );
}

async function detail(callId) {
  const found = await api("GET", `/v1/calls/${encodeURIComponent(callId)}`);
  const call = found.call;
  return el(
    "section",
    { class: "panel call-detail", "data-call": call.call_id },
    el("h2", {}, call.capability, " ", outcomeBadge(call.outcome)),
    table(
      [t("calls.field"), t("calls.value")],
      [
        [t("calls.call_id"), el("code", {}, call.call_id)],
        [t("calls.module"), call.module_id || "—"],
        [t("calls.transport"), call.transport || "—"],
        [t("calls.started"), formatDateTime(call.started_at, { dateStyle: "medium", timeStyle: "medium" })],
        [t("calls.ended"), formatDateTime(call.ended_at, { dateStyle: "medium", timeStyle: "medium" })],
        [t("calls.duration"), call.duration_ms == null ? "—" : `${formatNumber(call.duration_ms, { maximumFractionDigits: 1 })} ms`],
        [t("calls.chunks"), formatNumber(call.chunks)],
        call.error ? [t("calls.error"), `${call.error.code}: ${call.error.message}`] : null,
      ].filter(Boolean),
    ),
    payloadView(t("calls.request"), found.request),
    payloadView(t("calls.answer"), found.answer),
    el("h3", {}, t("calls.metering")),
    table(
      [t("calls.metric"), t("calls.value"), t("calls.outcome"), t("calls.billable")],
      found.usage.map((u) => [t(`metric.${u.metric}`), formatNumber(u.value), t(`outcome.${u.outcome}`), u.billable ? "✓" : ""]),
      t("calls.not_metered"),
    ),
  );
}

export default {
  path: "calls",
  title: "nav.calls",
  visible: () => can("billing:read"),
  async render(main, params) {
    const capability = el("input", { name: "capability", value: params.get("capability") || "", placeholder: "text.summarize" });
    const outcome = el("select", { name: "outcome" }, el("option", { value: "" }, t("calls.any_outcome")), OUTCOMES.map((o) => el("option", { value: o, selected: o === params.get("outcome") }, t(`outcome.${o}`))));
    const live = el("p", { class: "muted", role: "status" });
    const rows = el("tbody");
    const opened = el("div");
    const list = el(
      "div",
      { class: "table-wrap" },
      el("table", { class: "calls" }, el("thead", {}, el("tr", {}, [t("calls.when"), t("calls.capability"), t("calls.outcome"), t("calls.duration"), t("calls.module"), t("calls.transport")].map((h) => el("th", { scope: "col" }, h)))), rows),
    );
    let calls = [];
    let controller = null;

    function matches(call) {
      return (!capability.value.trim() || call.capability === capability.value.trim()) && (!outcome.value || call.outcome === outcome.value);
    }

    function row(call) {
      return el(
        "tr",
        { "data-call": call.call_id },
        el("td", {}, el("button", { type: "button", class: "link", onclick: async () => clear(opened).append(await detail(call.call_id)) }, formatDateTime(call.at, { timeStyle: "medium" }))),
        el("td", {}, call.capability),
        el("td", {}, outcomeBadge(call.outcome)),
        el("td", {}, call.duration_ms == null ? "—" : `${formatNumber(call.duration_ms, { maximumFractionDigits: 1 })} ms`),
        el("td", {}, call.module_id || "—"),
        el("td", {}, call.transport || "—"),
      );
    }

    function draw() {
      clear(rows).append(...calls.filter(matches).map(row));
      if (!rows.children.length) rows.append(el("tr", {}, el("td", { colspan: "6", class: "empty" }, t("calls.none"))));
    }

    async function load() {
      if (controller) controller.abort();
      const query = new URLSearchParams({ limit: String(SHOWN) });
      if (capability.value.trim()) query.set("capability", capability.value.trim());
      if (outcome.value) query.set("outcome", outcome.value);
      calls = (await api("GET", `/v1/calls?${query}`)).calls;
      draw();
      controller = new AbortController();
      live.textContent = t("calls.live");
      events("/v1/calls/live", {
        signal: controller.signal,
        onEvent: (name, call) => {
          if (name !== "call") return;
          calls = [call, ...calls.filter((c) => c.call_id !== call.call_id)].slice(0, SHOWN);
          if (matches(call)) draw();
        },
      }).catch((error) => {
        if (error.name !== "AbortError") live.textContent = t("calls.live_lost", { message: error.message });
      });
    }

    main.append(
      el(
        "form",
        { class: "toolbar", onsubmit: (event) => (event.preventDefault(), load()) },
        field(t("calls.capability"), capability),
        field(t("calls.outcome"), outcome),
        el("button", { type: "submit" }, t("calls.filter")),
      ),
      live,
      list,
      opened,
    );
    await load();
    return () => controller && controller.abort();
  },
};
