// Building the page from text, never from markup: nothing a tenant writes can become a tag.

/**
 * An element: `attrs` are attributes, except `on<event>` (a listener) and `class`;
 * `children` are nodes, strings (text nodes), arrays of them, or null/false (skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in node) {
      node.value = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** A message at the corner of the screen, gone after a while. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = el("div", { class: `toast toast-${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** A labelled form field; `input` is the control element. */
export function field(label, input, hint = "") {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return el("div", { class: "field" }, el("label", { for: id }, label), input, hint ? el("small", {}, hint) : null);
}

/** A table of `rows` (arrays of cells: strings or nodes) under `headers`. */
export function table(headers, rows, empty = "") {
  if (!rows.length && empty) return el("p", { class: "empty" }, empty);
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell))))),
    ),
  );
}

/**
 * Like table(), but each cell carries its column's name (data-label), so that on a narrow
 * screen (console.css, .stack) every row becomes a card of "name: value" lines.
 */
export function stackedTable(headers, rows, empty = "") {
  if (!rows.length && empty) return el("p", { class: "empty" }, empty);
  return el(
    "div",
    { class: "table-wrap stack" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell, i) => el("td", { "data-label": headers[i] }, el("div", {}, cell)))))),
    ),
  );
}

/** A dialog asking to confirm `message`; resolves true or false. */
export function confirmDialog(message, confirmLabel, cancelLabel) {
  return new Promise((resolve) => {
    const dialog = el(
      "dialog",
      { class: "confirm" },
      el("p", {}, message),
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", class: "secondary", onclick: () => close(false) }, cancelLabel),
        el("button", { type: "button", onclick: () => close(true) }, confirmLabel),
      ),
    );
    function close(answer) {
      dialog.close();
      dialog.remove();
      resolve(answer);
    }
    dialog.addEventListener("cancel", () => close(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}
