// Operations (super admins): tenants (a new one with its first administrator, suspend, reinstate),
// modules and instances of every tenant, projections with their lag and quarantined events (retry),
// and the streams.
import { ApiError, api, can, describe, principal } from "../lib/api.js";
import { barChart } from "../lib/chart.js";
import { append, clear, el, field, table, toast } from "../lib/dom.js";
import { formatDateTime, formatNumber, t } from "../lib/i18n.js";

function problem(error) {
  return error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = Number(n);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${formatNumber(size, { maximumFractionDigits: unit ? 1 : 0 })} ${units[unit]}`;
}

/** A panel that loads on its own: one failing part does not hide the others. */
function panel(title, load) {
  const body = el("div", { class: "panel-body" }, el("p", {}, t("common.loading")));
  const section = el("section", { class: "panel ops-panel", "aria-label": title }, el("h2", {}, title), body);
  async function refresh() {
    try {
      const content = await load(refresh);
      clear(body).append(content);
    } catch (error) {
      clear(body).append(el("p", { class: "problem", role: "alert" }, problem(error)));
    }
  }
  return { section, refresh };
}

// A platform holds hundreds of tenants and modules: a table shows the first matches of its filter.
const MAX_ROWS = 50;

/** A filter box over `items` and what `draw(shown)` makes of the first MAX_ROWS matches (by
 * `text(item)`). The filter lives in `state`, so a refresh of the panel keeps what was typed. */
function filtered(label, state, items, text, draw) {
  const input = el("input", { type: "search", autocomplete: "off", spellcheck: "false", value: state.filter });
  const shown = el("div");
  function redraw() {
    state.filter = input.value;
    const q = input.value.trim().toLowerCase();
    const matches = q ? items.filter((item) => text(item).toLowerCase().includes(q)) : items;
    clear(shown).append(draw(matches.slice(0, MAX_ROWS)));
    if (matches.length > MAX_ROWS) shown.append(el("p", { class: "muted" }, t("operations.more_rows", { count: formatNumber(matches.length - MAX_ROWS) })));
  }
  input.addEventListener("input", redraw);
  redraw();
  return el("div", {}, el("div", { class: "toolbar" }, field(label, input)), shown);
}

/** Ask for a reason and confirmation; resolves the reason, or null when cancelled. */
function reasonDialog(message, okLabel) {
  return new Promise((resolve) => {
    const reason = el("textarea", { name: "reason", rows: "3", maxlength: "500", required: true, class: "reason" });
    const form = el(
      "form",
      {
        method: "dialog",
        onsubmit: (event) => {
          event.preventDefault();
          close(reason.value.trim());
        },
      },
      el("p", {}, message),
      field(t("operations.reason"), reason, t("operations.reason_hint")),
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", class: "secondary", onclick: () => close(null) }, t("common.cancel")),
        el("button", { type: "submit", class: "danger" }, okLabel),
      ),
    );
    const dialog = el("dialog", { class: "confirm" }, form);
    function close(answer) {
      dialog.close();
      dialog.remove();
      resolve(answer);
    }
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(null);
    });
    document.body.append(dialog);
    dialog.showModal();
    reason.focus();
  });
}

async function tenants(refresh, tenantFilter) {
  const { tenants: all } = await api("GET", "/v1/tenants");
  all.sort((a, b) => a.tenant_id.localeCompare(b.tenant_id));
  return filtered(t("operations.filter_tenants"), tenantFilter, all, (tenant) => `${tenant.tenant_id} ${tenant.name}`, (shown) => tenantTable(shown, refresh));
}

function tenantTable(shown, refresh) {
  const own = principal().tenant_id;
  return table(
    [t("operations.tenant"), t("operations.name"), t("operations.status"), t("operations.created"), t("operations.action")],
    shown.map((tenant) => {
      const suspended = tenant.suspended;
      const action = suspended ? "reinstate" : "suspend";
      const button =
        tenant.tenant_id === own
          ? el("span", { class: "muted" }, t("operations.own_tenant"))
          : el(
              "button",
              {
                type: "button",
                class: suspended ? "secondary" : "danger",
                "aria-label": t(`operations.${action}_named`, { tenant: tenant.tenant_id }),
                onclick: async () => {
                  const reason = await reasonDialog(t(`operations.${action}_confirm`, { tenant: tenant.tenant_id, name: tenant.name }), t(`operations.${action}`));
                  if (reason === null) return;
                  try {
                    await api("POST", `/v1/tenants/${encodeURIComponent(tenant.tenant_id)}/${action}`, reason ? { reason } : undefined);
                    toast(t(`operations.${action}_done`, { tenant: tenant.tenant_id }), "ok");
                  } catch (error) {
                    toast(problem(error), "error");
                  }
                  await refresh();
                },
              },
              t(`operations.${action}`),
            );
      return [
        el("code", {}, tenant.tenant_id),
        tenant.name,
        el("span", { class: suspended ? "badge bad" : "badge good" }, suspended ? t("operations.suspended") : t("operations.active")),
        formatDateTime(tenant.created_at),
        button,
      ];
    }),
    t("operations.no_tenants"),
  );
}

/**
 * A new tenant and its first administrator: two API calls, POST /v1/tenants then the admin's
 * POST /v1/tenants/{t}/users. When the second fails the tenant stays (a tenant cannot be
 * deleted), and the form keeps it: the next submit only adds the administrator.
 */
function newTenantForm(onCreated) {
  // No pattern or length here: the platform's rule for an id is the one that counts, and the API says it.
  const tenantId = el("input", { name: "tenant_id", autocomplete: "off", autocapitalize: "none", spellcheck: "false", required: true });
  const name = el("input", { name: "name", autocomplete: "off", maxlength: "200" });
  const email = el("input", { name: "email", inputmode: "email", autocomplete: "off", spellcheck: "false", required: true, maxlength: "254" });
  const password = el("input", { name: "password", type: "password", autocomplete: "new-password", required: true });
  const problem = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("operations.create_tenant"));
  const startOver = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => forget() }, t("operations.another_tenant"));
  let created = null; // the tenant made by an earlier submit whose administrator failed

  function keep(tenant) {
    created = tenant;
    tenantId.readOnly = true;
    name.readOnly = true;
    submit.textContent = t("operations.add_admin");
    startOver.hidden = false;
  }

  function forget() {
    created = null;
    tenantId.readOnly = false;
    name.readOnly = false;
    tenantId.value = "";
    name.value = "";
    email.value = "";
    password.value = "";
    problem.textContent = "";
    submit.textContent = t("operations.create_tenant");
    startOver.hidden = true;
  }

  async function create() {
    const tenant = tenantId.value.trim();
    if (created === null) {
      try {
        await api("POST", "/v1/tenants", { tenant_id: tenant, name: name.value.trim() });
      } catch (error) {
        problem.textContent = describe(error);
        return;
      }
      keep(tenant);
      await onCreated();
    }
    try {
      await api("POST", `/v1/tenants/${encodeURIComponent(created)}/users`, { email: email.value.trim(), password: password.value, role: "tenant_admin" });
    } catch (error) {
      problem.textContent = t("operations.admin_failed", { tenant: created, error: describe(error) });
      return;
    }
    toast(t("operations.tenant_ready", { tenant: created, email: email.value.trim() }), "ok");
    forget();
  }

  return el(
    "form",
    {
      class: "panel new-tenant",
      "aria-label": t("operations.new_tenant"),
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        submit.disabled = true;
        try {
          await create();
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h2", {}, t("operations.new_tenant")),
    el("p", { class: "meta" }, t("operations.new_tenant_intro")),
    el(
      "div",
      { class: "form-grid" },
      field(t("operations.tenant_id"), tenantId, t("operations.tenant_id_hint")),
      field(t("operations.name"), name),
      field(t("operations.admin_email"), email),
      field(t("operations.admin_password"), password, t("operations.admin_password_hint")),
    ),
    problem,
    el("div", { class: "actions" }, submit, startOver),
  );
}

async function modules(moduleFilter) {
  const [{ modules: registered }, { instances }] = await Promise.all([api("GET", "/v1/modules"), api("GET", "/v1/ops/instances")]);
  const byModule = new Map();
  for (const instance of instances) byModule.set(instance.module_id, (byModule.get(instance.module_id) || 0) + 1);
  return el(
    "div",
    {},
    el("h3", {}, t("operations.registered_modules")),
    filtered(
      t("operations.filter_modules"),
      moduleFilter,
      registered,
      (m) => `${m.tenant_id} ${m.module_id} ${m.name || ""} ${m.capabilities.join(" ")}`,
      (shown) =>
        table(
          [t("operations.tenant"), t("operations.module"), t("operations.capabilities"), t("operations.instances"), t("operations.status")],
          shown.map((m) => [
            el("code", {}, m.tenant_id),
            [m.name || m.module_id, " ", el("code", { class: "muted" }, m.module_id)],
            m.capabilities.join(", "),
            formatNumber(byModule.get(m.module_id) || 0),
            el("span", { class: m.revoked_at ? "badge bad" : "badge good" }, m.revoked_at ? t("operations.revoked") : t("operations.active")),
          ]),
          t("operations.no_modules"),
        ),
    ),
    el("h3", {}, t("operations.live_instances")),
    table(
      [t("operations.module"), t("operations.instance"), t("operations.tenant"), t("operations.capabilities"), t("operations.in_flight"), t("operations.status")],
      instances.map((i) => [
        el("code", {}, i.module_id),
        el("code", {}, i.instance_id),
        i.tenant_id ? el("code", {}, i.tenant_id) : el("span", { class: "muted" }, t("operations.platform")),
        i.capabilities.join(", "),
        formatNumber(i.in_flight),
        el("span", { class: i.leaving ? "badge" : "badge good" }, i.leaving ? t("operations.leaving") : t("operations.live")),
      ]),
      t("operations.no_instances"),
    ),
  );
}

async function projections(refresh) {
  const report = await api("GET", "/v1/ops/projections");
  const retry = (letter) =>
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-label": t("operations.retry_named", { projection: letter.projection, sequence: letter.sequence }),
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            const path = `/v1/ops/projections/${encodeURIComponent(letter.projection)}/quarantine/${letter.sequence}/retry`;
            const outcome = await api("POST", path);
            if (outcome.applied) toast(t("operations.retry_applied", { sequence: letter.sequence }), "ok");
            else toast(t("operations.retry_failed", { sequence: letter.sequence, attempts: outcome.attempts }), "error");
          } catch (error) {
            toast(problem(error), "error");
          }
          await refresh();
        },
      },
      t("operations.retry"),
    );
  return el(
    "div",
    {},
    table(
      [t("operations.projection"), t("operations.stream"), t("operations.applied"), t("operations.stream_last"), t("operations.lag_events"), t("operations.lag_seconds"), t("operations.quarantined")],
      report.projections.map((p) => [
        el("code", {}, p.name),
        p.stream,
        formatNumber(p.applied),
        formatNumber(p.stream_last),
        el("span", { class: p.lag_events ? "badge bad" : "badge good" }, formatNumber(p.lag_events)),
        formatNumber(p.lag_seconds, { maximumFractionDigits: 1 }),
        el("span", { class: p.quarantined ? "badge bad" : "badge good" }, formatNumber(p.quarantined)),
      ]),
      t("operations.no_projections"),
    ),
    el("h3", {}, t("operations.quarantine_title", { count: formatNumber(report.quarantined_total) })),
    el("p", { class: "meta" }, t("operations.quarantine_hint")),
    table(
      [t("operations.projection"), t("operations.sequence"), t("operations.subject"), t("operations.error"), t("operations.attempts"), t("operations.quarantined_at"), t("operations.action")],
      report.quarantined.map((q) => [
        el("code", {}, q.projection),
        el("span", { class: "nowrap" }, `${q.stream} #${q.sequence}`),
        el("code", {}, q.subject),
        el("code", { class: "error-text" }, q.error),
        formatNumber(q.attempts),
        formatDateTime(q.quarantined_at),
        retry(q),
      ]),
      t("operations.no_quarantine"),
    ),
  );
}

async function streams() {
  const { streams: all } = await api("GET", "/v1/ops/streams");
  return el(
    "div",
    {},
    barChart(
      t("operations.stream_bytes"),
      all.map((s) => ({ label: s.name, value: s.bytes })),
      { format: bytes, empty: t("operations.no_streams") },
    ),
    table(
      [t("operations.stream"), t("operations.subjects"), t("operations.messages"), t("operations.bytes"), t("operations.sequences"), t("operations.last_message"), t("operations.consumers")],
      all.map((s) => [
        el("code", {}, s.name),
        s.subjects.join(" "),
        formatNumber(s.messages),
        bytes(s.bytes),
        `${formatNumber(s.first_seq)}–${formatNumber(s.last_seq)}`,
        formatDateTime(s.last_time),
        formatNumber(s.consumers),
      ]),
      t("operations.no_streams"),
    ),
  );
}

export default {
  path: "operations",
  title: "nav.operations",
  // The permission the ops API asks for: only super admins hold it (through "*").
  visible: () => can("ops:read"),
  async render(main) {
    const filters = { tenants: { filter: "" }, modules: { filter: "" } }; // kept while the page is open
    const parts = [
      panel(t("operations.tenants_title"), (refresh) => tenants(refresh, filters.tenants)),
      panel(t("operations.modules_title"), () => modules(filters.modules)),
      panel(t("operations.projections_title"), projections),
      panel(t("operations.streams_title"), streams),
    ];
    append(main, [
      el("p", { class: "intro" }, t("operations.intro")),
      el("div", { class: "toolbar" }, el("button", { type: "button", class: "secondary", onclick: () => parts.forEach((p) => p.refresh()) }, t("common.refresh"))),
      can("tenant:create") ? newTenantForm(() => parts[0].refresh()) : null,
      ...parts.map((p) => p.section),
    ]);
    await Promise.all(parts.map((p) => p.refresh()));
  },
};
