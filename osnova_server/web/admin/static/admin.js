// The Osnova admin page: plain JavaScript, no build step, nothing from another host.
// Calls go to /admin/rpc with the session cookie and the CSRF token (kept only in memory);
// live updates come from the /admin/live WebSocket. Everything a user or a device supplied
// (names, URIs, error messages) is put on the page as text, never as markup.
"use strict";

(() => {
  const SIGN_IN_PAGE = "/admin/";
  const RECONNECT_MAX_MS = 10000;
  const state = { csrf: null, nextId: 1, devices: [], pairing: null, countdown: null, socket: null, retryMs: 1000 };

  const $ = (id) => document.getElementById(id);

  // -- building the page from data, as text -------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function fact(term, value, extraClass) {
    return el("div", {}, el("dt", { text: term }), el("dd", { text: value, class: extraClass || "" }));
  }

  function when(iso) {
    if (!iso) return "never";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${s % 60} s`;
    return `${s % 60} s`;
  }

  function show(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  function banner(text) {
    show($("banner"), text || "");
  }

  // -- talking to the server --------------------------------------------------------------

  class RpcError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  function signedOut() {
    window.location.replace(SIGN_IN_PAGE);
  }

  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf || "" },
        body: JSON.stringify(body),
      });
    } catch (err) {
      throw new Error("The server does not answer. Is it running? This page reconnects when it is back.");
    }
    if (response.status === 401) {
      signedOut();
      throw new Error("Your session has ended.");
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const message = answer && typeof answer.error === "string" ? answer.error : `The server answered ${response.status}.`;
      throw new Error(message);
    }
    return answer;
  }

  async function rpc(method, params) {
    const answer = await post("/admin/rpc", { jsonrpc: "2.0", id: state.nextId++, method, params: params || {} });
    if (answer.error) throw new RpcError(answer.error.code, answer.error.message);
    return answer.result;
  }

  async function loadSession() {
    let response;
    try {
      response = await fetch("/admin/api/session", { credentials: "same-origin" });
    } catch (err) {
      return false;
    }
    if (response.status === 401) {
      signedOut();
      return false;
    }
    if (!response.ok) return false;
    state.csrf = (await response.json()).csrf_token;
    return true;
  }

  // -- navigation -------------------------------------------------------------------------

  const SECTIONS = ["overview", "pair", "devices", "apps", "bans"];

  function route() {
    const wanted = window.location.hash.slice(1);
    const current = SECTIONS.includes(wanted) ? wanted : "overview";
    for (const name of SECTIONS) $(name).hidden = name !== current;
    for (const link of document.querySelectorAll("nav a[data-section]")) {
      if (link.dataset.section === current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (current === "bans") refreshBans();
    if (current === "devices") refreshDevices();
    if (current === "apps") refreshApps();
  }

  // -- overview ---------------------------------------------------------------------------

  function renderOverview(data) {
    const status = $("ov-status");
    status.textContent = data.status;
    status.className = `status status-${data.status}`;
    $("ov-version").textContent = data.version;
    $("ov-uptime").textContent = duration(data.uptime);
    $("ov-certificate").textContent = data.tls ? when(data.certificate_expires_at) : "no TLS (plain HTTP)";
    $("ov-connections").textContent = `${data.connections} of ${data.max_connections}`;
    $("ov-active").textContent = String(data.active_devices);
    $("ov-paired").textContent = String(data.paired_devices);
    $("ov-apps").textContent = String(data.apps);
    const list = $("ov-services");
    list.replaceChildren(...data.services.map((service) =>
      el("li", { class: "card" },
        el("span", { class: "card-title", text: service.name }),
        el("span", { class: "muted", text: ` ${service.kind} ` }),
        el("span", { class: `status status-${service.status}`, text: service.status }))));
  }

  // -- live socket ------------------------------------------------------------------------

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${window.location.host}/admin/live`);
    state.socket = socket;
    socket.addEventListener("open", () => {
      state.retryMs = 1000;
      $("live-state").textContent = "Live";
      banner("");
    });
    socket.addEventListener("message", (message) => {
      let note;
      try {
        note = JSON.parse(message.data);
      } catch (err) {
        return;
      }
      if (note.method === "event" && note.params) onEvent(note.params.topic, note.params.data || {});
    });
    socket.addEventListener("close", (closed) => {
      $("live-state").textContent = "Not live: reconnecting…";
      if (closed.code === 4401) {
        signedOut();
        return;
      }
      if (closed.code === 1001) {
        banner("The server is stopping or restarting. This page reconnects by itself when it is back.");
      }
      window.setTimeout(reconnect, state.retryMs);
      state.retryMs = Math.min(state.retryMs * 2, RECONNECT_MAX_MS);
    });
  }

  async function reconnect() {
    // A failed WebSocket handshake says nothing to a page, so ask plainly: signed out, or down?
    if (await loadSession()) {
      connect();
      refreshAll();
      return;
    }
    banner("The server does not answer. Is it running? This page reconnects when it is back.");
    window.setTimeout(reconnect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, RECONNECT_MAX_MS);
  }

  function onEvent(topic, data) {
    if (topic === "admin.overview") {
      renderOverview(data);
    } else if (topic.startsWith("devices.")) {
      if (topic === "devices.paired") announcePaired(data);
      refreshDevices();
    } else if (topic.startsWith("apps.")) {
      refreshApps();
    }
  }

  // -- pairing ----------------------------------------------------------------------------

  async function startPairing(event) {
    event.preventDefault();
    const error = $("pair-error");
    show(error, "");
    $("pair-done").hidden = true;
    const name = $("pair-name").value.trim();
    const params = { ttl: Number($("pair-ttl").value), role: $("pair-role").value };
    if (name) params.name = name;
    try {
      const payload = await rpc("pairing.start", params);
      const sealed = await post("/admin/qr", { text: JSON.stringify(payload) });
      state.pairing = payload;
      $("pair-qr").src = sealed.url;
      $("pair-code").textContent = payload.pairing.code;
      $("pair-address").textContent = payload.server.address;
      $("pair-fingerprint").textContent = payload.server.fingerprint;
      $("pair-result").hidden = false;
      tick();
    } catch (err) {
      show(error, err.message);
    }
  }

  function tick() {
    window.clearTimeout(state.countdown);
    if (!state.pairing) return;
    const left = Math.round((new Date(state.pairing.pairing.expiresAt).getTime() - Date.now()) / 1000);
    const countdown = $("pair-countdown");
    if (left <= 0) {
      countdown.textContent = "This code has expired. Get a new one.";
      $("pair-result").classList.add("expired");
      state.pairing = null;
      return;
    }
    $("pair-result").classList.remove("expired");
    countdown.textContent = `Expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    state.countdown = window.setTimeout(tick, 1000);
  }

  function announcePaired(data) {
    const name = data.name || data.device_id || "A device";
    const role = data.role ? ` as ${data.role}` : "";
    show($("pair-done"), `${name} paired${role}. It appears under Devices.`);
    if (state.pairing) {
      // The code on screen is spent (or another one was); take it away so nobody reuses it.
      state.pairing = null;
      window.clearTimeout(state.countdown);
      $("pair-result").hidden = true;
    }
  }

  // -- devices ----------------------------------------------------------------------------

  async function refreshDevices() {
    try {
      state.devices = await rpc("devices.list");
      renderDevices();
    } catch (err) {
      show($("devices-error"), err.message);
    }
  }

  function confirmStep(card, question, yesLabel, action) {
    const box = el("div", { class: "confirm", role: "group", "aria-label": question },
      el("p", { text: question }));
    const yes = el("button", { type: "button", class: "danger", text: yesLabel });
    const no = el("button", { type: "button", class: "secondary", text: "Cancel" });
    yes.addEventListener("click", async () => {
      box.remove();
      await action();
    });
    no.addEventListener("click", () => box.remove());
    box.append(yes, no);
    card.querySelector(".confirm")?.remove();
    card.append(box);
    yes.focus();
  }

  function deviceError(card, message) {
    card.querySelector(".error")?.remove();
    card.append(el("p", { class: "error", role: "alert", text: message }));
  }

  async function revokeDevice(device, card) {
    // Another tab or the command line may have revoked it meanwhile: say so instead of acting.
    const fresh = (await rpc("devices.list")).find((d) => d.device_id === device.device_id);
    if (!fresh) {
      deviceError(card, "This device is no longer known to the server.");
      refreshDevices();
      return;
    }
    if (fresh.revoked) {
      deviceError(card, "This device was already revoked; it can only be removed now.");
      refreshDevices();
      return;
    }
    await rpc("devices.revoke", { device_id: device.device_id });
    await refreshDevices();
  }

  function deviceCard(device) {
    const title = el("h2", { class: "card-title", text: device.name });
    const card = el("li", { class: device.revoked ? "card revoked" : "card", "data-device": device.device_id });
    const facts = el("dl", { class: "facts compact" },
      fact("Role", device.role || "member"),
      fact("Last seen", when(device.last_seen)),
      fact("Paired", when(device.paired_at)),
      fact("Paired by", device.paired_by || "admin"),
      fact("Status", device.revoked ? "revoked" : "active"),
      fact("Id", device.device_id, "mono"));
    card.append(title, facts);
    const actions = el("div", { class: "actions" });
    const guard = (action) => async () => {
      try {
        await action();
      } catch (err) {
        deviceError(card, err.message);
      }
    };
    if (!device.revoked) {
      const id = `role-${device.device_id}`;
      const select = el("select", { id, "aria-label": `Role of ${device.name}` },
        el("option", { value: "member", text: "member" }),
        el("option", { value: "owner", text: "owner" }));
      select.value = device.role || "member";
      const apply = el("button", { type: "button", class: "secondary", text: "Change role" });
      apply.addEventListener("click", guard(async () => {
        await rpc("devices.setRole", { device_id: device.device_id, role: select.value });
        await refreshDevices();
      }));
      const revoke = el("button", { type: "button", class: "danger", text: "Revoke" });
      revoke.addEventListener("click", () => confirmStep(card, `Revoke ${device.name}? Its tokens stop working at once.`,
        "Yes, revoke", guard(() => revokeDevice(device, card))));
      actions.append(el("label", { for: id, text: "Role", class: "inline" }), select, apply, revoke);
    } else {
      const remove = el("button", { type: "button", class: "danger", text: "Remove" });
      remove.addEventListener("click", () => confirmStep(card, `Forget ${device.name} for good?`, "Yes, remove",
        guard(async () => {
          await rpc("devices.remove", { device_id: device.device_id });
          await refreshDevices();
        })));
      actions.append(remove);
    }
    card.append(actions);
    return card;
  }

  function renderDevices() {
    show($("devices-error"), "");
    $("devices-empty").hidden = state.devices.length > 0;
    $("devices-list").replaceChildren(...state.devices.map(deviceCard));
  }

  // -- apps -------------------------------------------------------------------------------

  async function refreshApps() {
    try {
      const apps = await rpc("apps.list");
      $("apps-empty").hidden = apps.length > 0;
      $("apps-list").replaceChildren(...apps.map(appCard));
    } catch (err) {
      show($("apps-status"), err.message);
    }
  }

  function appCard(app) {
    const card = el("li", { class: "card", "data-app": app.id },
      el("h2", { class: "card-title", text: `${app.name} ` }, el("span", { class: "muted", text: app.version })),
      app.description ? el("p", { text: app.description }) : null,
      el("dl", { class: "facts compact" },
        fact("Id", app.id, "mono"),
        fact("Manifest", app.manifest_uri, "mono"),
        fact("Installed", when(app.installed_at))));
    const uninstall = el("button", { type: "button", class: "danger", text: "Uninstall" });
    uninstall.addEventListener("click", () => confirmStep(card, `Uninstall ${app.name}?`, "Yes, uninstall", async () => {
      try {
        await rpc("apps.uninstall", { app_id: app.id });
        show($("apps-status"), `${app.name} was uninstalled.`);
        await refreshApps();
      } catch (err) {
        deviceError(card, err.message);
      }
    }));
    card.append(el("div", { class: "actions" }, uninstall));
    return card;
  }

  async function install(event) {
    event.preventDefault();
    const input = $("install-uri");
    const error = $("install-error");
    const uri = input.value.trim();
    show(error, "");
    input.removeAttribute("aria-invalid");
    show($("apps-status"), "");
    if (!uri) {
      show(error, "Type the address of the app's manifest, e.g. https://example.org/app/manifest.json.");
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    try {
      const id = await rpc("apps.install", { manifest_uri: uri });
      input.value = "";
      show($("apps-status"), `Installed ${id}.`);
      await refreshApps();
    } catch (err) {
      show(error, err.message);
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  // -- bans -------------------------------------------------------------------------------

  async function refreshBans() {
    try {
      const bans = await rpc("bans.list");
      show($("bans-error"), "");
      $("bans-empty").hidden = bans.length > 0;
      $("bans-list").replaceChildren(...bans.map(banCard));
    } catch (err) {
      show($("bans-error"), err.message);
    }
  }

  function banCard(ban) {
    const card = el("li", { class: "card", "data-ban": ban.address },
      el("h2", { class: "card-title mono", text: ban.address }),
      el("dl", { class: "facts compact" },
        fact("Until", when(ban.banned_until)),
        fact("Why", ban.reason),
        fact("Since", when(ban.created_at))));
    const lift = el("button", { type: "button", text: `Lift ban` , "aria-label": `Lift the ban on ${ban.address}` });
    lift.addEventListener("click", async () => {
      try {
        await rpc("bans.lift", { address: ban.address });
      } catch (err) {
        deviceError(card, err.message);
        return;
      }
      await refreshBans();
    });
    card.append(el("div", { class: "actions" }, lift));
    return card;
  }

  // -- start ------------------------------------------------------------------------------

  function refreshAll() {
    refreshDevices();
    refreshApps();
    if (!$("bans").hidden) refreshBans();
  }

  async function logout() {
    try {
      await post("/admin/logout", {});
    } catch (err) {
      // Signed out or unreachable: either way this browser is done with the session.
    }
    signedOut();
  }

  async function start() {
    $("pair-form").addEventListener("submit", startPairing);
    $("install-form").addEventListener("submit", install);
    $("logout").addEventListener("click", logout);
    window.addEventListener("hashchange", route);
    if (!(await loadSession())) {
      banner("The server does not answer. Is it running? Reload this page when it is back.");
      return;
    }
    route();
    refreshAll();
    connect();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
