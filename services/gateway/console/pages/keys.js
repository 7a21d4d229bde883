// API keys: the tenant's keys (or only one's own), a new key with its secret shown once, revoking.
//
// The secret lives in this page's DOM only, from the answer that issued it until the page is
// left or reloaded: never in storage, a URL or a variable that outlives the page.
import { api, can, describe, principal } from "../lib/api.js";
import { clear, confirmDialog, el, field, stackedTable, toast } from "../lib/dom.js";
import { formatDateTime, formatNumber, t, timeZone } from "../lib/i18n.js";

// The platform's concrete permissions (services/identity/permissions.py): a key's scopes are
// those of them its owner holds, plus the owner's own wildcards ("module:*").
const PERMISSIONS = [
  "module:read",
  "module:use",
  "module:create",
  "module:update",
  "module:delete",
  "module:delete:own",
  "api_key:create",
  "api_key:create:own",
  "api_key:read",
  "api_key:read:own",
  "api_key:delete",
  "api_key:delete:own",
  "user:create",
  "user:read",
  "user:read:self",
  "user:update",
  "user:update:self",
  "user:delete",
  "tenant:read",
  "tenant:update",
  "billing:read",
  "billing:update",
];
const DEFAULT_SCOPES = ["module:read", "module:use"]; // what the API gives a key named without scopes
const MAX_RATE_LIMIT = 2147483647;

/** The UTC instant of the wall time `local` ("YYYY-MM-DDTHH:MM") in `zone`, as ISO 8601 with Z. */
function zonedToIso(local, zone) {
  const [date, time] = local.split("T");
  const [year, month, day] = date.split("-").map(Number);
  const [hour, minute] = time.split(":").map(Number);
  const wall = Date.UTC(year, month - 1, day, hour, minute);
  let instant = wall;
  for (let i = 0; i < 2; i++) instant = wall - offsetAt(instant, zone); // twice: right across a DST change
  return new Date(instant).toISOString();
}

function offsetAt(instant, zone) {
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone: zone,
    hourCycle: "h23",
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
  const parts = Object.fromEntries(format.formatToParts(new Date(instant)).map((p) => [p.type, p.value]));
  const shown = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return shown - Math.floor(instant / 1000) * 1000;
}

function mayCreate() {
  return can("api_key:create") || can("api_key:create:own");
}

function mayRevoke(key) {
  if (key.revoked_at) return false;
  return can("api_key:delete") || (can("api_key:delete:own") && key.user_id === principal().user_id);
}

function scopeChoices() {
  const held = principal().permissions.filter((p) => p !== "*");
  return [...new Set([...PERMISSIONS, ...held])].filter((p) => can(p));
}

function state(key) {
  if (key.revoked_at) return el("span", { class: "badge bad" }, t("keys.revoked_on", { when: formatDateTime(key.revoked_at) }));
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return el("span", { class: "badge bad" }, t("keys.expired"));
  return el("span", { class: "badge good" }, t("keys.active"));
}

function reach(key) {
  if (key.toolset) return t("keys.follows_toolset", { name: key.toolset });
  if (key.capabilities.length) return key.capabilities.join(", ");
  return t("keys.everything");
}

/** The box with a new key's secret, shown this once, with a copy button. */
function secretBox(issued) {
  const status = el("p", { role: "status", class: "muted" });
  const code = el("code", { class: "secret", "aria-label": t("keys.secret") }, issued.api_key);
  const copy = el(
    "button",
    {
      type: "button",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(issued.api_key);
          status.textContent = t("keys.copied");
        } catch (error) {
          status.textContent = t("keys.copy_failed", { message: String(error.message || error) });
        }
      },
    },
    t("keys.copy"),
  );
  const box = el(
    "section",
    { class: "panel new-secret", role: "region", "aria-label": t("keys.new_secret"), tabindex: "-1" },
    el("h2", {}, t("keys.new_secret_title", { name: issued.name || issued.prefix })),
    el("p", {}, t("keys.new_secret_once")),
    code,
    el(
      "div",
      { class: "actions" },
      copy,
      el("button", { type: "button", class: "secondary", onclick: () => box.remove() }, t("keys.dismiss")),
    ),
    status,
  );
  return box;
}

function createForm(toolsets, onIssued) {
  const name = el("input", { name: "name", maxlength: "200", required: true, autocomplete: "off" });
  const scopeBoxes = scopeChoices().map((scope) => {
    const box = el("input", { type: "checkbox", name: "scope", value: scope, checked: DEFAULT_SCOPES.includes(scope) });
    return { scope, box, label: el("label", { class: "check" }, box, scope) };
  });
  const scopes = el(
    "fieldset",
    { class: "scopes" },
    el("legend", {}, t("keys.scopes")),
    el("div", { class: "checks" }, scopeBoxes.map((s) => s.label)),
  );
  const reachChoice = el(
    "select",
    { name: "toolset" },
    el("option", { value: "" }, t("keys.everything")),
    toolsets.map((ts) => el("option", { value: `toolset:${ts.name}` }, t("keys.toolset_option", { name: ts.name, capabilities: ts.capabilities.join(", ") }))),
    el("option", { value: "list" }, t("keys.capability_list")),
  );
  const capabilities = el("input", { name: "capabilities", autocomplete: "off", spellcheck: "false", placeholder: "text.summarize, text.*" });
  const capabilitiesField = field(t("keys.capabilities"), capabilities, t("keys.capabilities_hint"));
  capabilitiesField.hidden = true;
  reachChoice.addEventListener("change", () => {
    capabilitiesField.hidden = reachChoice.value !== "list";
  });
  const expires = el("input", { name: "expires_at", type: "datetime-local" });
  const rateLimit = el("input", { name: "rate_limit", type: "number", min: "1", max: String(MAX_RATE_LIMIT), step: "1", inputmode: "numeric" });
  const problem = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("keys.create"));

  function body() {
    const chosen = scopeBoxes.filter((s) => s.box.checked).map((s) => s.scope);
    if (!chosen.length) throw new Error(t("keys.no_scope"));
    const answer = { name: name.value.trim(), scopes: chosen };
    if (reachChoice.value.startsWith("toolset:")) answer.toolset = reachChoice.value.slice("toolset:".length);
    if (reachChoice.value === "list") {
      const entries = capabilities.value.split(/[\s,]+/).filter(Boolean);
      if (!entries.length) throw new Error(t("keys.no_capability"));
      answer.capabilities = entries;
    }
    if (expires.value) answer.expires_at = zonedToIso(expires.value, timeZone());
    if (rateLimit.value) answer.rate_limit = Number(rateLimit.value);
    return answer;
  }

  return el(
    "form",
    {
      class: "panel new-key",
      "aria-label": t("keys.new"),
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        let request;
        try {
          request = body();
        } catch (error) {
          problem.textContent = error.message;
          return;
        }
        submit.disabled = true;
        try {
          const issued = await api("POST", `/v1/tenants/${encodeURIComponent(principal().tenant_id)}/api-keys`, request);
          name.value = "";
          expires.value = "";
          rateLimit.value = "";
          await onIssued(issued);
        } catch (error) {
          problem.textContent = describe(error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h2", {}, t("keys.new")),
    field(t("keys.name"), name),
    scopes,
    field(t("keys.reach"), reachChoice, t("keys.reach_hint")),
    capabilitiesField,
    field(t("keys.expires"), expires, t("keys.expires_hint", { zone: timeZone() })),
    field(t("keys.rate_limit"), rateLimit, t("keys.rate_limit_hint")),
    problem,
    el("div", { class: "actions" }, submit),
  );
}

export default {
  path: "keys",
  title: "nav.keys",
  visible: () => can("api_key:read") || can("api_key:read:own"),
  async render(main) {
    const who = principal();
    const tenant = encodeURIComponent(who.tenant_id);
    const secretSlot = el("div");
    const list = el("section", { class: "panel key-list", "aria-label": t("keys.list") });
    let toolsets = [];
    if (mayCreate()) {
      try {
        toolsets = (await api("GET", `/v1/tenants/${tenant}/toolsets`)).toolsets;
      } catch (error) {
        toast(describe(error), "error"); // the form still works without the tenant's toolsets
      }
    }
    let owners = new Map(); // user_id → e-mail, where the caller may read the tenant's users
    if (can("api_key:read") && can("user:read")) {
      try {
        owners = new Map((await api("GET", `/v1/tenants/${tenant}/users`)).users.map((u) => [u.user_id, u.email]));
      } catch {
        /* the owner column then shows user ids */
      }
    }

    async function revoke(key) {
      const sure = await confirmDialog(t("keys.revoke_confirm", { name: key.name || key.prefix }), t("keys.revoke"), t("common.cancel"));
      if (!sure) return;
      try {
        await api("DELETE", `/v1/tenants/${tenant}/api-keys/${encodeURIComponent(key.key_id)}`);
        toast(t("keys.revoked_toast", { name: key.name || key.prefix }), "ok");
      } catch (error) {
        toast(describe(error), "error");
      }
      await draw();
    }

    async function draw() {
      let keys;
      try {
        keys = (await api("GET", `/v1/tenants/${tenant}/api-keys`)).api_keys;
      } catch (error) {
        clear(list).append(el("h2", {}, t("keys.list")), el("p", { class: "problem", role: "alert" }, describe(error)));
        return;
      }
      keys.sort((a, b) => Boolean(a.revoked_at) - Boolean(b.revoked_at) || b.created_at.localeCompare(a.created_at));
      const everyone = can("api_key:read");
      const headers = [
        t("keys.name"),
        t("keys.prefix"),
        ...(everyone ? [t("keys.owner")] : []),
        t("keys.scopes"),
        t("keys.reach"),
        t("keys.expires"),
        t("keys.rate_limit"),
        t("keys.created"),
        t("keys.state"),
        t("keys.actions"),
      ];
      const rows = keys.map((key) => [
        key.name || t("keys.unnamed"),
        el("code", {}, key.prefix),
        ...(everyone ? [key.user_id === who.user_id ? t("keys.you") : owners.get(key.user_id) || key.user_id] : []),
        key.scopes.join(", "),
        reach(key),
        key.expires_at ? formatDateTime(key.expires_at) : t("keys.never"),
        key.rate_limit ? t("keys.per_minute", { count: formatNumber(key.rate_limit) }) : t("keys.plan_limit"),
        formatDateTime(key.created_at),
        state(key),
        mayRevoke(key)
          ? el("button", { type: "button", class: "danger", "aria-label": t("keys.revoke_named", { name: key.name || key.prefix }), onclick: () => revoke(key) }, t("keys.revoke"))
          : null,
      ]);
      if (rows.every((row) => row.at(-1) === null)) {
        // Nothing the caller may do to any row: no Actions column.
        headers.pop();
        for (const row of rows) row.pop();
      }
      clear(list).append(el("h2", {}, t("keys.list")), stackedTable(headers, rows, t("keys.none")));
    }

    main.append(el("p", { class: "muted" }, can("api_key:read") ? t("keys.intro_all") : t("keys.intro_own")));
    main.append(secretSlot);
    if (mayCreate()) {
      main.append(
        createForm(toolsets, async (issued) => {
          const box = secretBox(issued);
          clear(secretSlot).append(box);
          box.focus();
          await draw();
        }),
      );
    }
    main.append(list);
    await draw();
  },
};
