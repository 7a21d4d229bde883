// Catalog: every capability the caller may use, searchable, its schemas, and a try-it form.
import { ApiError, api, can, events } from "../lib/api.js";
import { clear, el, field, toast } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { schemaForm, schemaTable } from "../lib/schema.js";

function resultView(capability, value) {
  const box = el("div", { class: "result" });
  const schema = capability.output_schema || {};
  // An image the schema says is one (base64 PNG, JPEG…) is shown as the image.
  for (const [name, sub] of Object.entries(schema.properties || {})) {
    if (sub.contentEncoding === "base64" && (sub.contentMediaType || "").startsWith("image/") && value && typeof value[name] === "string") {
      box.append(el("img", { src: `data:${sub.contentMediaType};base64,${value[name]}`, alt: name, class: "result-image" }));
    }
  }
  const shown = JSON.stringify(value, (key, v) => (typeof v === "string" && v.length > 2000 ? `${v.slice(0, 2000)}… (${v.length})` : v), 2);
  box.append(el("pre", { "aria-label": t("catalog.result") }, shown));
  return box;
}

function tryIt(capability) {
  const form = schemaForm(capability.input_schema);
  const progress = el("progress", { max: "100", value: "0", hidden: true, "aria-label": t("catalog.progress") });
  const status = el("p", { class: "status", role: "status" });
  const output = el("div", { class: "output" });
  const run = el("button", { type: "submit" }, t("catalog.run"));
  let controller = null;
  const stop = el(
    "button",
    { type: "button", class: "secondary", hidden: true, onclick: () => controller && controller.abort() },
    t("catalog.stop"),
  );
  const panel = el(
    "form",
    {
      class: "try-it",
      onsubmit: async (event) => {
        event.preventDefault();
        clear(output);
        status.textContent = "";
        let payload;
        try {
          payload = await form.value();
        } catch (error) {
          status.textContent = error.message;
          return;
        }
        const path = `/v1/capabilities/${encodeURIComponent(capability.action)}/invoke`;
        run.disabled = true;
        const started = performance.now();
        try {
          if (capability.streaming) {
            progress.hidden = false;
            progress.value = 0;
            stop.hidden = false;
            controller = new AbortController();
            const chunks = el("ol", { class: "chunks" });
            output.append(chunks);
            let last = null;
            await events(path, {
              body: payload,
              signal: controller.signal,
              onEvent: (name, data) => {
                if (name === "chunk") {
                  if (data.progress) {
                    progress.value = Math.round(data.progress.fraction * 100);
                    status.textContent = data.progress.message || "";
                  }
                  if (data.data !== undefined && data.data !== null) {
                    last = data.data;
                    chunks.append(el("li", {}, resultView(capability, data.data)));
                  }
                } else if (name === "done") {
                  progress.value = 100;
                  status.textContent = t("catalog.done", { ms: Math.round(performance.now() - started), chunks: data.chunks });
                } else if (name === "error") {
                  throw new ApiError(0, data.error.code, data.error.message, data.error.details);
                }
              },
            });
            if (last === null) status.textContent ||= t("catalog.no_output");
          } else {
            const answer = await api("POST", path, payload);
            status.textContent = t("catalog.answered", { ms: Math.round(performance.now() - started), module: answer.module_id });
            output.append(resultView(capability, answer.result));
          }
        } catch (error) {
          if (error.name === "AbortError") {
            status.textContent = t("catalog.stopped");
          } else {
            status.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
            toast(status.textContent, "error");
          }
        } finally {
          run.disabled = false;
          stop.hidden = true;
          controller = null;
        }
      },
    },
    form.node,
    el("div", { class: "actions" }, run, stop),
    progress,
    status,
    output,
  );
  return panel;
}

// A platform may hold thousands of capabilities: the list shows the first matches, and the search narrows it.
const MAX_LISTED = 100;

/** One entry per capability, however many modules offer it: the one with the most live instances
 * speaks for it (the gateway routes a call by capability, to whichever serves it), the others
 * are counted. */
function byCapability(entries) {
  const providers = new Map();
  for (const entry of entries) {
    if (!providers.has(entry.action)) providers.set(entry.action, []);
    providers.get(entry.action).push(entry);
  }
  return [...providers.values()].map((offers) => {
    offers.sort((a, b) => b.instances - a.instances);
    return { ...offers[0], providers: offers, live: offers[0].instances > 0 };
  });
}

function detail(capability) {
  return el(
    "section",
    { class: "panel capability", "data-capability": capability.action },
    el("h2", {}, capability.action, capability.streaming ? el("span", { class: "badge" }, t("catalog.streaming")) : null),
    el("p", {}, capability.description || t("catalog.no_description")),
    el(
      "p",
      { class: "meta" },
      t("catalog.served_by", { module: capability.module_name || capability.module_id, version: capability.module_version, instances: capability.instances }),
      capability.providers.length > 1 ? [" ", t("catalog.other_modules", { count: capability.providers.length - 1 })] : null,
    ),
    el("h3", {}, t("catalog.input")),
    schemaTable(capability.input_schema),
    el("h3", {}, t("catalog.output")),
    schemaTable(capability.output_schema),
    el("details", {}, el("summary", {}, t("catalog.raw_schemas")), el("pre", {}, JSON.stringify({ input: capability.input_schema, output: capability.output_schema }, null, 2))),
    can("module:use") ? [el("h3", {}, t("catalog.try_it")), tryIt(capability)] : null,
  );
}

export default {
  path: "catalog",
  title: "nav.catalog",
  visible: () => can("module:read"),
  async render(main, params) {
    const capabilities = byCapability((await api("GET", "/v1/capabilities")).capabilities);
    const search = el("input", { type: "search", value: params.get("q") || "", placeholder: t("catalog.search_hint") });
    const list = el("ul", { class: "capability-list" });
    const shown = el("div");
    function draw() {
      const q = search.value.trim().toLowerCase();
      const matches = capabilities.filter((c) => !q || c.action.toLowerCase().includes(q) || (c.description || "").toLowerCase().includes(q));
      clear(list).append(
        ...matches.slice(0, MAX_LISTED).map((c) =>
          el(
            "li",
            {},
            el(
              "button",
              { type: "button", class: "link", "data-action": c.action, onclick: () => clear(shown).append(detail(c)) },
              c.action,
            ),
            " ",
            c.live ? null : [el("span", { class: "badge" }, t("catalog.unavailable")), " "],
            el("span", { class: "muted" }, c.description || ""),
          ),
        ),
      );
      if (matches.length > MAX_LISTED) list.append(el("li", { class: "muted" }, t("catalog.more", { count: matches.length - MAX_LISTED })));
      if (!matches.length) list.append(el("li", { class: "empty" }, capabilities.length ? t("catalog.no_match") : t("catalog.empty")));
    }
    search.addEventListener("input", draw);
    main.append(el("div", { class: "toolbar" }, field(t("catalog.search"), search)), list, shown);
    draw();
    const chosen = capabilities.find((c) => c.action === params.get("capability"));
    if (chosen) shown.append(detail(chosen));
  },
};
