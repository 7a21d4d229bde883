// The signed-in tenant's display name: the shell shows it in the header, the Organisation page
// renames it. One place for it, so a rename shows at once, without a reload.

let name = "";
const listeners = new Set();

export function tenantName() {
  return name;
}

/** The tenant's name as the API last answered it ("" when unknown or signed out). */
export function setTenantName(value) {
  name = value || "";
  for (const callback of listeners) callback(name);
}

/** `callback(name)` whenever the name changes. */
export function onTenantName(callback) {
  listeners.add(callback);
  return () => listeners.delete(callback);
}
