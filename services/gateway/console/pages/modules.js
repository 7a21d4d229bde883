// My modules: the modules the caller's organisation owns — capabilities, live instances, the calls
// every organisation made to them — and registering one, rotating its credential (shown once) and
// revoking it.
import { ApiError, api, can } from "../lib/api.js";
import { lineChart } from "../lib/chart.js";
import { append, clear, confirmDialog, el, field, stackedTable, table, toast } from "../lib/dom.js";
import { formatDateTime, formatNumber, t } from "../lib/i18n.js";

const LIVE_EVERY_MS = 5000; // instances come and go with their heartbeats: look again this often

function problem(error) {
  return error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
}

/** A new credential, shown this once: the platform never shows it again. */
function secretBox(title, answer, onDone) {
  const box = el(
    "section",
    { class: "panel new-secret", role: "region", "aria-label": title },
    el("h2", {}, title),
    el("p", {}, t("modules.secret_once")),
    el("p", { class: "secret", "aria-label": t("modules.credential") }, answer.credential),
    el(
      "div",
      { class: "actions" },
      el(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(answer.credential);
              toast(t("modules.copied"), "ok");
            } catch {
              toast(t("modules.copy_failed"), "error");
            }
          },
        },
        t("modules.copy"),
      ),
      el("button", { type: "button", onclick: () => (box.remove(), onDone && onDone()) }, t("modules.secret_done")),
    ),
  );
  return box;
}

function registerForm(onRegistered) {
  const moduleId = el("input", { name: "module_id", required: true, pattern: "[a-z0-9_\\-]{1,64}", autocomplete: "off" });
  const name = el("input", { name: "name", autocomplete: "off" });
  const capabilities = el("input", { name: "capabilities", required: true, autocomplete: "off" });
  const status = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("modules.register"));
  return el(
    "form",
    {
      class: "panel register-module",
      "aria-label": t("modules.register_title"),
      onsubmit: async (event) => {
        event.preventDefault();
        status.textContent = "";
        const wanted = capabilities.value.split(/[\s,]+/).filter(Boolean);
        submit.disabled = true;
        try {
          const answer = await api("POST", "/v1/modules", { module_id: moduleId.value.trim(), name: name.value.trim(), capabilities: wanted });
          event.target.reset();
          onRegistered(answer);
        } catch (error) {
          status.textContent = problem(error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h2", {}, t("modules.register_title")),
    el(
      "div",
      { class: "form-grid" },
      field(t("modules.module_id"), moduleId, t("modules.module_id_hint")),
      field(t("modules.name"), name),
      field(t("modules.capabilities"), capabilities, t("modules.capabilities_hint")),
    ),
    status,
    submit,
  );
}

function instancesTable(instances) {
  return table(
    [t("modules.instance"), t("modules.capabilities"), t("modules.in_flight"), t("modules.state")],
    instances.map((i) => [
      el("code", {}, i.instance_id),
      i.capabilities.join(", "),
      formatNumber(i.in_flight),
      el("span", { class: i.leaving ? "badge" : "badge good" }, i.leaving ? t("modules.leaving") : t("modules.live")),
    ]),
    t("modules.no_instances"),
  );
}

const WINDOWS = [60, 1440]; // minutes the calls section looks back: the last hour, the last 24 hours

function milliseconds(value) {
  return value == null ? "—" : formatNumber(value, { maximumFractionDigits: 1 });
}

function percent(value) {
  return value == null ? "—" : formatNumber(value, { style: "percent", maximumFractionDigits: 1 });
}

// The calls the module answered, from every organisation that called it (GET
// /v1/modules/{id}/stats: counts and latency only, nothing of who called): calls and errors per
// minute, and per capability its errors, success rate and p50/p95 latency.
function callsSection(module) {
  const id = module.module_id;
  const period = el("select", { name: "window", onchange: () => load() }, WINDOWS.map((m) => el("option", { value: String(m) }, t(`modules.window_${m}`))));
  const shown = el("div", {}, el("p", {}, t("common.loading")));
  const section = el("div", { class: "module-calls" }, el("div", { class: "list-head" }, el("h3", {}, t("modules.calls_title")), field(t("modules.window"), period)), shown);

  async function load() {
    try {
      const stats = await api("GET", `/v1/modules/${encodeURIComponent(id)}/stats?minutes=${period.value}`);
      const title = t("modules.calls_chart", { module: id });
      const minutes = stats.per_minute.map((m) => Date.parse(m.minute));
      const daily = stats.minutes > 60; // a day's ticks need their hour; an hour's, its minutes
      clear(shown).append(
        el("p", { class: "meta" }, t("modules.calls_summary", { calls: formatNumber(stats.total.calls), errors: formatNumber(stats.total.errors) })),
        lineChart(
          title,
          [
            { name: t("modules.series_calls"), points: stats.per_minute.map((m, i) => [minutes[i], m.calls]) },
            { name: t("modules.series_errors"), points: stats.per_minute.map((m, i) => [minutes[i], m.errors]) },
          ],
          {
            label: (x) => formatDateTime(new Date(x), daily ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" } : { hour: "2-digit", minute: "2-digit" }),
            format: (v) => formatNumber(v),
          },
        ),
        stackedTable(
          [t("modules.capability"), t("modules.series_calls"), t("modules.series_errors"), t("modules.success_rate"), t("modules.p50"), t("modules.p95")],
          stats.capabilities.map((c) => [el("code", {}, c.capability), formatNumber(c.calls), formatNumber(c.errors), percent(c.success_rate), milliseconds(c.p50_ms), milliseconds(c.p95_ms)]),
          t("modules.no_calls"),
        ),
      );
    } catch (error) {
      clear(shown).append(el("p", { class: "problem" }, problem(error)));
    }
  }

  load();
  return section;
}

function moduleCard(module, { onSecret, onChanged }) {
  const id = module.module_id;
  const live = el("div", { class: "module-instances" }, el("p", {}, t("common.loading")));
  const actions = el("div", { class: "actions" });
  const revoked = Boolean(module.revoked_at);
  if (!revoked && can("module:update")) {
    actions.append(
      el(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: async () => {
            if (!(await confirmDialog(t("modules.rotate_confirm", { module: id }), t("modules.rotate"), t("common.cancel")))) return;
            try {
              onSecret(t("modules.rotated_title", { module: id }), await api("POST", `/v1/modules/${encodeURIComponent(id)}/credential`));
              onChanged();
            } catch (error) {
              toast(problem(error), "error");
            }
          },
        },
        t("modules.rotate"),
      ),
    );
  }
  if (!revoked && (can("module:delete") || can("module:delete:own"))) {
    actions.append(
      el(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: async () => {
            if (!(await confirmDialog(t("modules.revoke_confirm", { module: id }), t("modules.revoke"), t("common.cancel")))) return;
            try {
              await api("DELETE", `/v1/modules/${encodeURIComponent(id)}`);
              toast(t("modules.revoked_done", { module: id }), "ok");
              onChanged();
            } catch (error) {
              toast(problem(error), "error");
            }
          },
        },
        t("modules.revoke"),
      ),
    );
  }
  const card = el(
    "section",
    { class: "panel module", "data-module": id, "aria-label": id },
    el(
      "h2",
      {},
      module.name || id,
      " ",
      el("code", { class: "muted" }, id),
      " ",
      revoked ? el("span", { class: "badge bad" }, t("modules.revoked")) : null,
    ),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, t("modules.capabilities")),
      el("dd", {}, module.capabilities.length ? module.capabilities.map((c) => el("code", { class: "chip" }, c)) : "—"),
      el("dt", {}, t("modules.credential_prefix")),
      el("dd", {}, el("code", {}, `${module.credential_prefix}…`)),
      el("dt", {}, t("modules.registered")),
      el("dd", {}, formatDateTime(module.created_at)),
      revoked ? [el("dt", {}, t("modules.revoked_at")), el("dd", {}, formatDateTime(module.revoked_at))] : null,
    ),
    revoked ? null : [el("h3", {}, t("modules.instances_title")), live],
    callsSection(module),
    actions.childElementCount ? actions : null,
  );
  async function refreshLive() {
    if (revoked) return;
    try {
      const answer = await api("GET", `/v1/modules/${encodeURIComponent(id)}/instances`);
      clear(live).append(instancesTable(answer.instances));
    } catch (error) {
      clear(live).append(el("p", { class: "problem" }, problem(error)));
    }
  }
  return { card, refreshLive };
}

export default {
  path: "modules",
  title: "nav.modules",
  visible: () => can("module:read") || can("module:create"),
  async render(main) {
    const secrets = el("div", { class: "secrets", "aria-live": "polite" });
    const list = el("div", { class: "module-list" });
    let cards = [];
    let timer = null;
    const refresh = el("button", { type: "button", class: "secondary", onclick: () => draw().catch((e) => toast(problem(e), "error")) }, t("common.refresh"));

    function showSecret(title, answer) {
      clear(secrets).append(secretBox(title, answer));
      secrets.querySelector("button:last-child").focus();
    }

    async function draw() {
      const { modules } = await api("GET", "/v1/modules");
      modules.sort((a, b) => Boolean(a.revoked_at) - Boolean(b.revoked_at) || a.module_id.localeCompare(b.module_id));
      cards = modules.map((m) => moduleCard(m, { onSecret: showSecret, onChanged: () => draw().catch((e) => toast(problem(e), "error")) }));
      clear(list).append(
        el("div", { class: "list-head" }, el("h2", {}, t("modules.list_title")), refresh),
        ...(cards.length ? cards.map((c) => c.card) : [el("p", { class: "empty" }, t("modules.none"))]),
      );
      await Promise.all(cards.map((c) => c.refreshLive()));
    }

    append(main, [
      el("p", { class: "intro" }, t("modules.intro")),
      secrets,
      can("module:create") ? registerForm((answer) => (showSecret(t("modules.registered_title", { module: answer.module_id }), answer), draw())) : null,
      list,
    ]);
    await draw();
    timer = setInterval(() => cards.forEach((c) => c.refreshLive()), LIVE_EVERY_MS);
    return () => clearInterval(timer);
  },
};
