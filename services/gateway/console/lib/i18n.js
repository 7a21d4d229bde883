// Three languages (the browser's, switchable, remembered), the user's time zone, the tenant's currency.

export const LANGUAGES = { en: "English", ja: "日本語", zh: "中文" };
const LANGUAGE_KEY = "dai.console.language"; // a preference, not a secret
const TIME_ZONE_KEY = "dai.console.timeZone";

let language = "en";
let messages = {};
let fallback = {};
// The message files: one per part of the console and language (i18n/<part>.<language>.json),
// so each page keeps its own words.
let parts = ["shell"];

export function messageParts(names) {
  parts = ["shell", ...names];
}

async function catalog(code) {
  const files = await Promise.all(
    parts.map(async (part) => {
      const response = await fetch(`/console/static/i18n/${part}.${code}.json`);
      if (!response.ok) throw new Error(`no ${part} messages for ${code}`);
      return response.json();
    }),
  );
  return Object.assign({}, ...files);
}

/** The language to start in: the one chosen before, else the browser's first we speak. */
export function preferredLanguage() {
  const chosen = localStorage.getItem(LANGUAGE_KEY);
  if (chosen && chosen in LANGUAGES) return chosen;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const code = tag.toLowerCase().split("-")[0];
    if (code in LANGUAGES) return code;
  }
  return "en";
}

export async function useLanguage(code, remember = false) {
  if (!(code in LANGUAGES)) code = "en";
  if (!Object.keys(fallback).length) fallback = await catalog("en");
  messages = code === "en" ? fallback : await catalog(code);
  language = code;
  document.documentElement.lang = code;
  if (remember) localStorage.setItem(LANGUAGE_KEY, code);
}

export function currentLanguage() {
  return language;
}

/** The message `key` in the current language, `{name}` replaced from `vars`. */
export function t(key, vars = {}) {
  const text = messages[key] ?? fallback[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

export function timeZone() {
  return localStorage.getItem(TIME_ZONE_KEY) || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

export function useTimeZone(zone) {
  Intl.DateTimeFormat(undefined, { timeZone: zone }); // throws RangeError for a zone that does not exist
  localStorage.setItem(TIME_ZONE_KEY, zone);
}

const LOCALES = { en: "en-GB", ja: "ja-JP", zh: "zh-CN" };

export function locale() {
  return LOCALES[language] || "en-GB";
}

/** A date and time from an ISO 8601 string (or a Date), in the user's time zone. */
export function formatDateTime(value, options = { dateStyle: "medium", timeStyle: "short" }) {
  if (!value) return "—";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), { ...options, timeZone: timeZone() }).format(date);
}

export function formatDate(value) {
  return formatDateTime(value, { dateStyle: "medium" });
}

export function formatNumber(value, options = {}) {
  return new Intl.NumberFormat(locale(), options).format(Number(value));
}

/** An amount (a decimal string or number) in `currency`, as the user's language writes it. */
export function formatMoney(amount, currency) {
  try {
    return new Intl.NumberFormat(locale(), { style: "currency", currency: currency || "USD" }).format(Number(amount));
  } catch {
    return `${amount} ${currency}`;
  }
}

/** The number of decimals `currency` is written with (its minor unit: JPY 0, USD 2). */
export function currencyDigits(currency) {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** An amount in integer minor units (as invoices hold them: yen, cents) in `currency`. */
export function formatMinorUnits(minor, currency) {
  return formatMoney(Number(minor) / 10 ** currencyDigits(currency), currency);
}

/** A unit price (a decimal string) with as many decimals as it has: ¥0.05, ¥50, $0.015. */
export function formatPrice(price, currency) {
  try {
    return new Intl.NumberFormat(locale(), { style: "currency", currency, maximumFractionDigits: 6 }).format(Number(price));
  } catch {
    return `${price} ${currency}`;
  }
}
