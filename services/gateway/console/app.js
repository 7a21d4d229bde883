// The console's shell: sign-in, the navigation, the language, and which page shows.
import { ApiError, api, can, onSession, principal, renew, signIn, signOut } from "./lib/api.js";
import { clear, el, field, toast } from "./lib/dom.js";
import { LANGUAGES, currentLanguage, messageParts, preferredLanguage, t, useLanguage } from "./lib/i18n.js";
import { onTenantName, setTenantName, tenantName } from "./lib/tenant.js";
import overview from "./pages/overview.js";
import usage from "./pages/usage.js";
import catalog from "./pages/catalog.js";
import calls from "./pages/calls.js";
import keys from "./pages/keys.js";
import users from "./pages/users.js";
import billing from "./pages/billing.js";
import organisation from "./pages/organisation.js";
import modules from "./pages/modules.js";
import operations from "./pages/operations.js";

// Each page: {path, title (a message key), visible(): whether the signed-in user may open it,
// render(main, params): draws into `main`, and may return a function that stops what it started}.
const PAGES = [overview, usage, catalog, calls, keys, users, organisation, billing, modules, operations];
const BASE = "/console";

const root = document.getElementById("app");
let stopPage = null;
let whoLine = null; // the header's "name (id) · role", redrawn when the tenant is renamed

function pageOf(path) {
  const name = path.replace(/^\/console\/?/, "").split("/")[0] || "overview";
  return PAGES.find((page) => page.path === name && page.visible()) || PAGES.find((page) => page.visible());
}

export function go(path) {
  history.pushState({}, "", `${BASE}/${path}`);
  show();
}

function languagePicker() {
  const select = el(
    "select",
    {
      onchange: async (event) => {
        await useLanguage(event.target.value, true);
        show();
      },
    },
    Object.entries(LANGUAGES).map(([code, name]) => el("option", { value: code, selected: code === currentLanguage() }, name)),
  );
  return field(t("language"), select);
}

function signInPage() {
  const tenant = el("input", { name: "tenant", autocomplete: "organization", required: true });
  const email = el("input", { name: "email", type: "email", autocomplete: "username", required: true });
  const password = el("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const problem = el("p", { class: "problem", role: "alert" });
  const button = el("button", { type: "submit" }, t("signin.submit"));
  const form = el(
    "form",
    {
      class: "signin",
      onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        button.disabled = true;
        try {
          await signIn(tenant.value.trim(), email.value.trim(), password.value);
        } catch (error) {
          problem.textContent = error instanceof ApiError ? t(`error.${error.code}`, { message: error.message }) : String(error);
        } finally {
          button.disabled = false;
        }
      },
    },
    el("h1", {}, "Democratic_AI"),
    el("p", {}, t("signin.intro")),
    field(t("signin.tenant"), tenant),
    field(t("signin.email"), email),
    field(t("signin.password"), password),
    problem,
    button,
    languagePicker(),
  );
  clear(root).append(el("main", { id: "main", class: "signin-page" }, form));
  tenant.focus();
}

/** "Name (id) · role": the tenant's name is its own words, shown as text. */
function whoText() {
  const who = principal();
  const name = tenantName();
  return `${name ? `${name} (${who.tenant_id})` : who.tenant_id} · ${t(`role.${who.role}`)}`;
}

function shell(current) {
  whoLine = el("span", { class: "who" }, whoText());
  const nav = el(
    "nav",
    { "aria-label": t("nav.label") },
    el(
      "ul",
      {},
      PAGES.filter((page) => page.visible()).map((page) =>
        el(
          "li",
          {},
          el(
            "a",
            {
              href: `${BASE}/${page.path}`,
              "aria-current": page === current ? "page" : null,
              onclick: (event) => {
                event.preventDefault();
                go(page.path);
              },
            },
            t(page.title),
          ),
        ),
      ),
    ),
  );
  const header = el(
    "header",
    {},
    el("a", { class: "brand", href: `${BASE}/overview` }, "Democratic_AI"),
    whoLine,
    languagePicker(),
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        onclick: async () => {
          try {
            await signOut();
          } catch (error) {
            toast(String(error.message || error), "error");
          }
        },
      },
      t("signout"),
    ),
  );
  const main = el("main", { id: "main", tabindex: "-1" });
  clear(root).append(header, nav, main);
  return main;
}

function show() {
  if (stopPage) {
    stopPage();
    stopPage = null;
  }
  if (!principal()) {
    signInPage();
    return;
  }
  const page = pageOf(location.pathname);
  const main = shell(page);
  document.title = `${t(page.title)} · Democratic_AI`;
  main.append(el("h1", {}, t(page.title)));
  const params = new URLSearchParams(location.search);
  Promise.resolve(page.render(main, params))
    .then((stop) => {
      if (typeof stop === "function") stopPage = stop;
    })
    .catch((error) => {
      main.append(el("p", { class: "problem", role: "alert" }, error instanceof ApiError ? `${error.code}: ${error.message}` : String(error)));
    });
}

async function start() {
  messageParts(PAGES.map((page) => page.path));
  await useLanguage(preferredLanguage());
  window.addEventListener("popstate", show);
  onTenantName(() => {
    if (whoLine && whoLine.isConnected && principal()) whoLine.textContent = whoText();
  });
  let signedIn = false;
  onSession(async (who) => {
    if (Boolean(who) !== signedIn) {
      signedIn = Boolean(who);
      let name = "";
      if (who) {
        try {
          name = (await api("GET", `/v1/tenants/${encodeURIComponent(who.tenant_id)}`)).name;
        } catch {
          /* the id alone, then */
        }
      }
      setTenantName(name);
      show(); // only when the user signs in or out; a renewed token changes nothing on screen
    }
  });
  try {
    await renew(); // a session from before the reload, if the cookie holds one
  } catch (error) {
    toast(String(error.message || error), "error");
  }
  if (!principal()) show();
}

start();
