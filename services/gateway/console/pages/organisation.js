// Organisation: the tenant itself (id, name, created, state) and renaming it; its named toolsets —
// the sets of capabilities its API keys may follow — defined, redefined and deleted.
//
// Every control needs tenant:update and shows only with it; the API refuses the rest anyway. A
// toolset that live keys follow is not deleted: the API's 409 names them, and the page says which.
import { api, can, describe, principal } from "../lib/api.js";
import { append, clear, confirmDialog, el, field, stackedTable, toast } from "../lib/dom.js";
import { formatDateTime, t } from "../lib/i18n.js";
import { setTenantName } from "../lib/tenant.js";

/** "text.summarize, text.*" or one per line → the entries, as the API takes them. */
function entriesOf(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** A key as a person recognises it: its name and prefix (its id, if this page cannot see it). */
function keyLabel(keyId, keys) {
  const key = keys && keys.get(keyId);
  if (!key) return t("organisation.key_id", { id: keyId });
  return [key.name || t("organisation.unnamed_key"), " ", el("code", {}, key.prefix)];
}

function facts(tenant) {
  return el(
    "dl",
    { class: "facts" },
    el("dt", {}, t("organisation.id")),
    el("dd", {}, el("code", {}, tenant.tenant_id)),
    el("dt", {}, t("organisation.name")),
    el("dd", {}, tenant.name),
    el("dt", {}, t("organisation.created")),
    el("dd", {}, formatDateTime(tenant.created_at)),
    el("dt", {}, t("organisation.state")),
    el(
      "dd",
      {},
      tenant.suspended
        ? el("span", { class: "badge bad" }, t("organisation.suspended"))
        : el("span", { class: "badge good" }, t("organisation.active")),
    ),
  );
}

function renameForm(tenant, onRenamed) {
  const name = el("input", { name: "name", maxlength: "200", required: true, autocomplete: "off", value: tenant.name });
  const problem = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("organisation.rename"));
  return el(
    "form",
    {
      class: "rename",
      "aria-label": t("organisation.rename_title"),
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        submit.disabled = true;
        try {
          const renamed = await api("PATCH", `/v1/tenants/${encodeURIComponent(tenant.tenant_id)}`, { name: name.value });
          toast(t("organisation.renamed", { name: renamed.name }), "ok");
          onRenamed(renamed);
        } catch (error) {
          problem.textContent = describe(error); // what was typed stays, to be corrected
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h3", {}, t("organisation.rename_title")),
    field(t("organisation.name"), name, t("organisation.rename_hint")),
    problem,
    el("div", { class: "actions" }, submit),
  );
}

/** The form that defines a toolset, or redefines one (`edit` fills it from a listed toolset). */
function toolsetForm(tenant, onSaved) {
  const name = el("input", { name: "toolset", maxlength: "64", required: true, autocomplete: "off", spellcheck: "false" });
  const capabilities = el("input", {
    name: "capabilities",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "text.summarize, text.*",
  });
  const problem = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("organisation.save"));
  const form = el(
    "form",
    {
      class: "panel new-toolset",
      "aria-label": t("organisation.toolset_new"),
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        submit.disabled = true;
        try {
          const saved = await api("PUT", `/v1/tenants/${tenant}/toolsets/${encodeURIComponent(name.value)}`, {
            capabilities: entriesOf(capabilities.value),
          });
          name.value = "";
          capabilities.value = "";
          toast(t("organisation.saved", { name: saved.name, capabilities: saved.capabilities.join(", ") }), "ok");
          await onSaved();
        } catch (error) {
          problem.textContent = describe(error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h2", {}, t("organisation.toolset_new")),
    field(t("organisation.toolset_name"), name, t("organisation.toolset_name_hint")),
    field(t("organisation.capabilities"), capabilities, t("organisation.capabilities_hint")),
    problem,
    el("div", { class: "actions" }, submit),
  );
  function edit(toolset) {
    problem.textContent = "";
    name.value = toolset.name;
    capabilities.value = toolset.capabilities.join(", ");
    form.scrollIntoView({ block: "nearest" });
    capabilities.focus();
  }
  return { form, edit };
}

export default {
  path: "organisation",
  title: "nav.organisation",
  visible: () => can("tenant:read"),
  async render(main) {
    const who = principal();
    const tenant = encodeURIComponent(who.tenant_id);
    const mayChange = can("tenant:update");
    const details = el("section", { class: "panel organisation", "aria-label": t("organisation.details") });
    const refusal = el("div", { class: "refusal", role: "alert" }); // a delete the API refused, and why
    const listSlot = el("div");
    const list = el(
      "section",
      { class: "panel toolset-list", "aria-label": t("organisation.toolsets") },
      el("h2", {}, t("organisation.toolsets")),
      el("p", { class: "muted" }, t("organisation.toolsets_intro")),
      refusal,
      listSlot,
    );
    let keys = null; // key id → key, where the caller may read the tenant's keys: who follows what
    const form = mayChange
      ? toolsetForm(tenant, async () => {
          clear(refusal);
          await draw();
        })
      : null;

    function drawDetails(answer) {
      append(clear(details), [
        el("h2", {}, t("organisation.details")),
        facts(answer),
        mayChange
          ? renameForm(answer, (renamed) => {
              setTenantName(renamed.name); // the shell's header, at once
              drawDetails(renamed);
            })
          : null,
      ]);
    }

    async function loadDetails() {
      try {
        drawDetails(await api("GET", `/v1/tenants/${tenant}`));
      } catch (error) {
        clear(details).append(el("h2", {}, t("organisation.details")), el("p", { class: "problem", role: "alert" }, describe(error)));
      }
    }

    function showRefusal(toolset, error) {
      const named = error.code === "CONFLICT" && Array.isArray(error.details.api_keys) ? error.details.api_keys : [];
      append(clear(refusal), [
        el("p", {}, describe(error)),
        named.length ? el("p", {}, t("organisation.delete_refused", { name: toolset.name })) : null,
        named.length ? el("ul", { "aria-label": t("organisation.followers_of", { name: toolset.name }) }, named.map((id) => el("li", {}, keyLabel(id, keys)))) : null,
      ]);
    }

    async function remove(toolset) {
      const sure = await confirmDialog(t("organisation.delete_confirm", { name: toolset.name }), t("organisation.delete"), t("common.cancel"));
      if (!sure) return;
      clear(refusal);
      try {
        await api("DELETE", `/v1/tenants/${tenant}/toolsets/${encodeURIComponent(toolset.name)}`);
        toast(t("organisation.deleted", { name: toolset.name }), "ok");
      } catch (error) {
        showRefusal(toolset, error);
      }
      await draw();
    }

    async function draw() {
      let toolsets;
      try {
        const [listed, keyList] = await Promise.all([
          api("GET", `/v1/tenants/${tenant}/toolsets`),
          can("api_key:read") ? api("GET", `/v1/tenants/${tenant}/api-keys`).catch(() => null) : null,
        ]);
        toolsets = listed.toolsets;
        keys = keyList ? new Map(keyList.api_keys.map((key) => [key.key_id, key])) : null;
      } catch (error) {
        clear(listSlot).append(el("p", { class: "problem", role: "alert" }, describe(error)));
        return;
      }
      const headers = [t("organisation.toolset_name"), t("organisation.capabilities")];
      if (keys) headers.push(t("organisation.followed_by"));
      if (mayChange) headers.push(t("organisation.actions"));
      const rows = toolsets.map((toolset) => {
        const row = [toolset.name, el("div", {}, toolset.capabilities.map((entry) => el("code", { class: "chip" }, entry)))];
        if (keys) {
          // As the API counts them: a key follows its toolset until it is revoked.
          const followers = [...keys.values()].filter((key) => key.toolset === toolset.name && !key.revoked_at);
          row.push(
            followers.length
              ? el("ul", { class: "followers" }, followers.map((key) => el("li", {}, keyLabel(key.key_id, keys))))
              : el("span", { class: "muted" }, t("organisation.no_keys")),
          );
        }
        if (mayChange) {
          row.push(
            el(
              "div",
              { class: "actions" },
              el(
                "button",
                { type: "button", class: "secondary", "aria-label": t("organisation.edit_named", { name: toolset.name }), onclick: () => form.edit(toolset) },
                t("organisation.edit"),
              ),
              el(
                "button",
                { type: "button", class: "danger", "aria-label": t("organisation.delete_named", { name: toolset.name }), onclick: () => remove(toolset) },
                t("organisation.delete"),
              ),
            ),
          );
        }
        return row;
      });
      clear(listSlot).append(stackedTable(headers, rows, t("organisation.none")));
    }

    main.append(el("p", { class: "muted" }, mayChange ? t("organisation.intro") : t("organisation.intro_read_only")));
    main.append(details);
    if (form) main.append(form.form);
    main.append(list);
    await Promise.all([loadDetails(), draw()]);
  },
};
