// Charts as SVG, drawn here: a line chart of series over time, and horizontal bars.
import { el } from "./dom.js";

const COLOURS = ["#1f4fa3", "#c2410c", "#15803d", "#7e22ce", "#0e7490", "#b91c1c", "#a16207", "#4b5563"];
const W = 640;

function svg(tag, attrs = {}, ...children) {
  return el(`svg:${tag}`, attrs, ...children);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * A line chart. `series`: [{name, points: [[Date|number x, number y], …]}]; `label(x)` writes an
 * x tick, `format(y)` a value. The chart says what it shows to a screen reader (`title`), and
 * each point tells its value on hover.
 */
export function lineChart(title, series, { label = String, format = String, height = 220, empty = title } = {}) {
  const pad = { left: 52, right: 12, top: 12, bottom: 28 };
  const xs = series.flatMap((s) => s.points.map(([x]) => +x));
  const ys = series.flatMap((s) => s.points.map(([, y]) => y));
  const figure = el("figure", { class: "chart" });
  if (!xs.length) {
    figure.append(el("p", { class: "empty" }, empty));
    return figure;
  }
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  // Counts (calls, bytes) get whole-number ticks: an axis of 0.25 calls says nothing.
  const top = Math.max(...ys, 0);
  const yMax = ys.every(Number.isInteger) ? 4 * Math.ceil(Math.max(1, niceMax(top / 4))) : niceMax(top);
  const sx = (x) => pad.left + (x1 === x0 ? (W - pad.left - pad.right) / 2 : ((+x - x0) / (x1 - x0)) * (W - pad.left - pad.right));
  const sy = (y) => height - pad.bottom - (y / yMax) * (height - pad.top - pad.bottom);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": title, class: "chart-svg" });
  chart.append(svg("title", {}, title));
  for (let i = 0; i <= 4; i++) {
    const y = (yMax * i) / 4;
    chart.append(
      svg("line", { x1: pad.left, x2: W - pad.right, y1: sy(y), y2: sy(y), class: "grid" }),
      svg("text", { x: pad.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, format(y)),
    );
  }
  const ticks = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(ticks.length / 6));
  ticks.forEach((x, i) => {
    if (i % every === 0) chart.append(svg("text", { x: sx(x), y: height - 8, "text-anchor": "middle", class: "tick" }, label(x)));
  });
  series.forEach((s, index) => {
    const colour = COLOURS[index % COLOURS.length];
    const points = [...s.points].sort((a, b) => +a[0] - +b[0]);
    chart.append(
      svg("polyline", {
        points: points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "),
        fill: "none",
        stroke: colour,
        "stroke-width": 2,
      }),
    );
    if (points.length > 24) return; // a dense series is its line; points to hover would crowd it
    for (const [x, y] of points) {
      chart.append(svg("circle", { cx: sx(x), cy: sy(y), r: 3, fill: colour }, svg("title", {}, `${s.name} · ${label(x)}: ${format(y)}`)));
    }
  });
  figure.append(chart, legend(series.map((s) => s.name)));
  return figure;
}

/** Horizontal bars: `items` [{label, value, note?}], longest first as given. */
export function barChart(title, items, { format = String, empty = title } = {}) {
  const figure = el("figure", { class: "chart" });
  if (!items.length) {
    figure.append(el("p", { class: "empty" }, empty));
    return figure;
  }
  const row = 26;
  const height = items.length * row + 8;
  const max = niceMax(Math.max(...items.map((i) => i.value), 0));
  const left = 170;
  // Room right of the longest bar for its value and note (about 6.5 px a character at 11 px).
  const room = Math.min(W - left - 80, 16 + 6.5 * Math.max(...items.map((i) => (format(i.value) + (i.note ? ` ${i.note}` : "")).length)));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": title, class: "chart-svg" });
  chart.append(svg("title", {}, title));
  items.forEach((item, i) => {
    const y = 4 + i * row;
    const width = Math.max(1, (item.value / max) * (W - left - room));
    chart.append(
      svg("text", { x: left - 8, y: y + 16, "text-anchor": "end", class: "tick" }, item.label.length > 26 ? item.label.slice(0, 25) + "…" : item.label),
      svg("rect", { x: left, y: y + 3, width, height: row - 8, fill: COLOURS[i % COLOURS.length], rx: 3 }, svg("title", {}, `${item.label}: ${format(item.value)}`)),
      svg("text", { x: left + width + 6, y: y + 16, class: "tick" }, format(item.value) + (item.note ? ` ${item.note}` : "")),
    );
  });
  figure.append(chart);
  return figure;
}

function legend(names) {
  return el(
    "figcaption",
    { class: "legend" },
    names.map((name, i) => el("span", {}, el("i", { class: "swatch", "data-colour": i % COLOURS.length }), name)),
  );
}
