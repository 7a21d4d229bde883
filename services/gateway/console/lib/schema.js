// JSON Schemas, readably: a table of an object's fields, and a form that builds a value of it.
import { el, field } from "./dom.js";
import { t } from "./i18n.js";

function typeOf(schema) {
  if (!schema || typeof schema !== "object") return "any";
  if (Array.isArray(schema.type)) return schema.type.join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.type === "array") return `${typeOf(schema.items)}[]`;
  return schema.type || (schema.properties ? "object" : "any");
}

function limits(schema) {
  const parts = [];
  for (const [key, word] of [
    ["minimum", "≥"],
    ["maximum", "≤"],
    ["minLength", "min length"],
    ["maxLength", "max length"],
    ["minItems", "min items"],
    ["maxItems", "max items"],
  ]) {
    if (schema[key] !== undefined) parts.push(`${word} ${schema[key]}`);
  }
  if (schema.default !== undefined) parts.push(`${t("catalog.default")} ${JSON.stringify(schema.default)}`);
  if (schema.contentMediaType) parts.push(schema.contentMediaType);
  else if (schema.contentEncoding) parts.push(schema.contentEncoding);
  return parts.join(", ");
}

/** The fields of an object schema as a table; anything else as its type. */
export function schemaTable(schema) {
  const properties = (schema && schema.properties) || null;
  if (!properties) return el("p", {}, el("code", {}, typeOf(schema)));
  const required = new Set(schema.required || []);
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el(
        "thead",
        {},
        el("tr", {}, [t("catalog.field"), t("catalog.type"), t("catalog.required"), t("catalog.notes")].map((h) => el("th", { scope: "col" }, h))),
      ),
      el(
        "tbody",
        {},
        Object.entries(properties).map(([name, sub]) =>
          el(
            "tr",
            {},
            el("td", {}, el("code", {}, name)),
            el("td", {}, typeOf(sub)),
            el("td", {}, required.has(name) ? "✓" : ""),
            el("td", {}, [sub.description || "", limits(sub)].filter(Boolean).join(" — ")),
          ),
        ),
      ),
    ),
  );
}

function readFileAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/**
 * A form for a value of `schema` (an object schema): a control per field — text, number,
 * checkbox, a choice for an enum, a file for base64 content, JSON for anything nested.
 * Returns {node, value()}: value() resolves to the payload, or throws naming the field.
 */
export function schemaForm(schema) {
  const properties = (schema && schema.properties) || null;
  if (!properties) {
    const text = el("textarea", { name: "payload", spellcheck: "false" }, "{}");
    return {
      node: field(t("catalog.payload"), text),
      value: async () => JSON.parse(text.value),
    };
  }
  const required = new Set(schema.required || []);
  const readers = [];
  const node = el("div", { class: "schema-form" });
  for (const [name, sub] of Object.entries(properties)) {
    const type = Array.isArray(sub.type) ? sub.type[0] : sub.type;
    const label = `${name}${required.has(name) ? " *" : ""}`;
    const hint = [sub.description || "", limits(sub)].filter(Boolean).join(" — ");
    let control;
    let read;
    if (sub.enum) {
      control = el(
        "select",
        { name },
        required.has(name) ? null : el("option", { value: "" }, "—"),
        sub.enum.map((v) => el("option", { value: JSON.stringify(v), selected: v === sub.default }, String(v))),
      );
      read = async () => (control.value === "" ? undefined : JSON.parse(control.value));
    } else if (type === "string" && sub.contentEncoding === "base64") {
      control = el("input", { name, type: "file" });
      read = async () => (control.files.length ? readFileAsBase64(control.files[0]) : undefined);
    } else if (type === "string") {
      const long = (sub.maxLength || 0) > 200 || /text|prompt|content|body/.test(name);
      control = long
        ? el("textarea", { name, maxlength: sub.maxLength, required: required.has(name) }, sub.default ?? "")
        : el("input", { name, type: "text", value: sub.default ?? "", maxlength: sub.maxLength, required: required.has(name) });
      read = async () => (control.value === "" && !required.has(name) ? undefined : control.value);
    } else if (type === "integer" || type === "number") {
      control = el("input", {
        name,
        type: "number",
        step: type === "integer" ? "1" : "any",
        min: sub.minimum,
        max: sub.maximum,
        value: sub.default ?? "",
        required: required.has(name),
      });
      read = async () => (control.value === "" ? undefined : Number(control.value));
    } else if (type === "boolean") {
      control = el("input", { name, type: "checkbox", checked: sub.default === true });
      read = async () => control.checked;
    } else {
      control = el("textarea", { name, spellcheck: "false" }, sub.default !== undefined ? JSON.stringify(sub.default, null, 2) : "");
      read = async () => {
        if (control.value.trim() === "") return undefined;
        try {
          return JSON.parse(control.value);
        } catch {
          throw new Error(t("catalog.bad_json", { field: name }));
        }
      };
    }
    node.append(field(label, control, hint));
    readers.push([name, read]);
  }
  return {
    node,
    value: async () => {
      const payload = {};
      for (const [name, read] of readers) {
        const v = await read();
        if (v !== undefined) payload[name] = v;
      }
      return payload;
    },
  };
}
