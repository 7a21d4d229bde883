// Users: the tenant's users (or only oneself), a new one, a role changed, a user deactivated.
//
// Each control shows only where the caller's permissions allow it; the API refuses the rest anyway.
import { api, can, describe, principal } from "../lib/api.js";
import { clear, confirmDialog, el, field, stackedTable, toast } from "../lib/dom.js";
import { formatDateTime, t } from "../lib/i18n.js";

// The roles a tenant's users may have (super admins are not made through the API).
const ROLES = ["tenant_admin", "developer", "user", "viewer"];

function roleSelect(current, attrs = {}) {
  return el(
    "select",
    attrs,
    ROLES.map((role) => el("option", { value: role, selected: role === current }, t(`role.${role}`))),
  );
}

function createForm(onCreated) {
  // Text, not type=email: the platform's rule for an address is the one that counts, and the API says it.
  const email = el("input", { name: "email", inputmode: "email", autocomplete: "off", spellcheck: "false", required: true, maxlength: "254" });
  const password = el("input", { name: "password", type: "password", autocomplete: "new-password", required: true });
  const role = roleSelect("user", { name: "role" });
  const problem = el("p", { class: "problem", role: "alert" });
  const submit = el("button", { type: "submit" }, t("users.create"));
  return el(
    "form",
    {
      class: "panel new-user",
      "aria-label": t("users.new"),
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        submit.disabled = true;
        try {
          const created = await api("POST", `/v1/tenants/${encodeURIComponent(principal().tenant_id)}/users`, {
            email: email.value.trim(),
            password: password.value,
            role: role.value,
          });
          email.value = "";
          password.value = "";
          toast(t("users.created", { email: created.email }), "ok");
          await onCreated();
        } catch (error) {
          problem.textContent = describe(error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h2", {}, t("users.new")),
    field(t("users.email"), email),
    field(t("users.password"), password, t("users.password_hint")),
    field(t("users.role"), role),
    problem,
    el("div", { class: "actions" }, submit),
  );
}

export default {
  path: "users",
  title: "nav.users",
  visible: () => can("user:read") || can("user:read:self"),
  async render(main) {
    const who = principal();
    const tenant = encodeURIComponent(who.tenant_id);
    const list = el("section", { class: "panel user-list", "aria-label": t("users.list") });

    async function changeRole(user, select) {
      try {
        await api("PATCH", `/v1/tenants/${tenant}/users/${encodeURIComponent(user.user_id)}`, { role: select.value });
        toast(t("users.role_changed", { email: user.email, role: t(`role.${select.value}`) }), "ok");
      } catch (error) {
        toast(describe(error), "error");
      }
      await draw();
    }

    async function deactivate(user) {
      const sure = await confirmDialog(t("users.deactivate_confirm", { email: user.email }), t("users.deactivate"), t("common.cancel"));
      if (!sure) return;
      try {
        await api("POST", `/v1/tenants/${tenant}/users/${encodeURIComponent(user.user_id)}/deactivate`);
        toast(t("users.deactivated_toast", { email: user.email }), "ok");
      } catch (error) {
        toast(describe(error), "error");
      }
      await draw();
    }

    function roleCell(user) {
      if (!can("user:update") || !user.active || user.user_id === who.user_id) return t(`role.${user.role}`);
      const select = roleSelect(user.role, { "aria-label": t("users.role_of", { email: user.email }) });
      return el(
        "div",
        { class: "inline-control" },
        select,
        el(
          "button",
          { type: "button", class: "secondary", "aria-label": t("users.change_role_of", { email: user.email }), onclick: () => changeRole(user, select) },
          t("users.change_role"),
        ),
      );
    }

    async function draw() {
      let users;
      try {
        users = (await api("GET", `/v1/tenants/${tenant}/users`)).users;
      } catch (error) {
        clear(list).append(el("h2", {}, t("users.list")), el("p", { class: "problem", role: "alert" }, describe(error)));
        return;
      }
      const headers = [t("users.email"), t("users.role"), t("users.state"), t("users.created_at"), t("users.actions")];
      const rows = users.map((user) => [
        user.user_id === who.user_id ? [user.email, " ", el("span", { class: "badge" }, t("users.you"))] : user.email,
        roleCell(user),
        user.active ? el("span", { class: "badge good" }, t("users.active")) : el("span", { class: "badge bad" }, t("users.inactive")),
        formatDateTime(user.created_at),
        can("user:delete") && user.active && user.user_id !== who.user_id
          ? el(
              "button",
              { type: "button", class: "danger", "aria-label": t("users.deactivate_named", { email: user.email }), onclick: () => deactivate(user) },
              t("users.deactivate"),
            )
          : null,
      ]);
      if (rows.every((row) => row.at(-1) === null)) {
        // Nothing the caller may do to any row: no Actions column.
        headers.pop();
        for (const row of rows) row.pop();
      }
      clear(list).append(el("h2", {}, t("users.list")), stackedTable(headers, rows, t("users.none")));
    }

    main.append(el("p", { class: "muted" }, can("user:read") ? t("users.intro_all") : t("users.intro_self")));
    if (can("user:create")) main.append(createForm(draw));
    main.append(list);
    await draw();
  },
};
