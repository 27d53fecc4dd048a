// Switchboard's web console: logs in over the normal WebSocket with the SDK and looks inside
// the deployment with the protocol's own commands.
import { Switchboard, SwitchboardError } from "@switchboard/client";

const $ = (id) => document.getElementById(id);
let sb;
let watching;
let paused = false;
let current = { user: "", session: "" };

function text(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = text(cell ?? "");
    tr.append(td);
  }
  return tr;
}

function link(label, onClick) {
  const a = document.createElement("a");
  a.textContent = label;
  a.addEventListener("click", (event) => {
    event.preventDefault();
    onClick();
  });
  return a;
}

function show(page) {
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === page);
  if (page === "overview") void overview();
  if (page === "users") void users();
}

function report(target, error) {
  $(target).textContent = error instanceof SwitchboardError ? `error ${error.code}: ${error.message}` : String(error);
}

function uptime(seconds) {
  const [h, m, s] = [Math.floor(seconds / 3600), Math.floor((seconds % 3600) / 60), seconds % 60];
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

async function overview() {
  const list = await sb.userList();
  $("count-users").textContent = Object.keys(list).length;
  $("count-sessions").textContent = Object.values(list).reduce((n, ids) => n + ids.length, 0);
  // The gateways and their figures come from the admin listener that served this page.
  const answer = await fetch("stats.json").catch(() => undefined);
  if (!answer?.ok) return;
  const stats = await answer.json();
  $("count-gateways").textContent = stats.totals.gateways;
  $("count-connections").textContent = stats.totals.connections;
  $("count-subscriptions").textContent = stats.totals.subscriptions;
  $("gateways-body").replaceChildren(
    ...stats.gateways.map((g) =>
      row([g.gateway, g.address, g.connections ?? g.error, g.sessions ?? "", g.subscriptions ?? "",
        g.uptime_seconds === undefined ? "" : uptime(g.uptime_seconds), g.version ?? ""]),
    ),
  );
}

async function users() {
  const list = await sb.userList();
  const body = $("users-body");
  body.replaceChildren(
    ...Object.entries(list).map(([user, ids]) => row([link(user, () => void userDetail(user)), ids.length])),
  );
}

async function userDetail(user) {
  const sessions = await sb.userGet(user);
  $("user-name").textContent = user;
  $("user-detail").hidden = false;
  $("user-sessions").replaceChildren(
    ...Object.entries(sessions).map(([id, info]) =>
      row([link(id, () => void sessionPage(user, id, info.remote)), info.remote, info.meta ?? ""]),
    ),
  );
}

async function sessionPage(user, id, remote) {
  current = { user, session: id };
  $("session-id").textContent = id;
  $("session-user").textContent = user;
  $("session-remote").textContent = remote ?? "";
  $("session-result").textContent = "";
  // The protocol lists a session's subscriptions to that session only: shown for our own.
  const own = id === sb.sessionId;
  $("session-subscriptions-box").hidden = !own;
  if (own) {
    const subscriptions = await sb.request("event", "get_subscriptions", {});
    $("session-subscriptions").replaceChildren(
      ...subscriptions.map((s) => {
        const li = document.createElement("li");
        li.textContent = [s.class, s.subclass, s.type, s.obj_id].join("/");
        return li;
      }),
    );
  }
  show("session");
}

function watch(spec) {
  void watching?.unsubscribe();
  $("events-body").replaceChildren();
  $("events-watching").textContent = `watching ${[spec.class, spec.subclass ?? "*", spec.type ?? "*", spec.obj_id ?? "*"].join("/")}`;
  return sb
    .subscribe(spec, (event) => {
      if (paused) return;
      const key = [event.class, event.subclass ?? "*", event.type ?? "*", event.obj_id ?? "*"].join("/");
      const filter = $("events-filter").value;
      const body = event.body === undefined ? "" : JSON.stringify(event.body);
      if (filter && !`${key} ${body}`.includes(filter)) return;
      $("events-body").prepend(row([new Date().toLocaleTimeString(), key, body]));
    })
    .then((subscription) => {
      watching = subscription;
    });
}

function logFrame(direction, value) {
  const log = $("frames-log");
  log.textContent = `${direction} ${JSON.stringify(value)}\n${log.textContent}`.slice(0, 20000);
}

async function start(url, user, password) {
  sb?.close();
  sb = new Switchboard(url, { user, password });
  sb.on("state", (state) => {
    $("status").textContent = state;
    $("status").className = `status ${state}`;
  });
  sb.on("event", (event) => logFrame("event", event));
  sb.onCommand((request) => ({ console: true, received: request.cmd }));
  await sb.connect();
  $("login").hidden = true;
  $("nav").hidden = false;
  $("me-user").textContent = user;
  $("me-session").textContent = sb.sessionId;
  show("overview");
}

function bind() {
  fetch("config.json")
    .then((answer) => (answer.ok ? answer.json() : {}))
    .then((config) => {
      if (!$("login-url").value) $("login-url").value = `ws://${location.hostname}:${config.port ?? 9010}/api/ws`;
    })
    .catch(() => {});
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    $("login-error").textContent = "";
    start(form.get("url"), form.get("user"), form.get("password")).catch((error) => report("login-error", error));
  });
  for (const a of document.querySelectorAll("nav a")) {
    a.addEventListener("click", (event) => {
      event.preventDefault();
      show(a.dataset.page);
    });
  }
  $("refresh").addEventListener("click", () => void overview());
  $("me-session").addEventListener("click", (event) => {
    event.preventDefault();
    void sessionPage($("me-user").textContent, sb.sessionId, "this console");
  });
  $("session-stop").addEventListener("click", () => {
    sb.stopSession(current.session)
      .then((user) => ($("session-result").textContent = `stopped (user ${user})`))
      .catch((error) => report("session-result", error));
  });
  $("session-event").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    Promise.resolve()
      .then(() => sb.sendToSession(current.session, form.get("type") || "*", JSON.parse(form.get("body") || "{}")))
      .then(() => ($("session-result").textContent = "event sent"))
      .catch((error) => report("session-result", error));
  });
  $("session-cmd").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    Promise.resolve()
      .then(() => sb.cmd(current.session, form.get("class"), form.get("cmd"), JSON.parse(form.get("data") || "{}")))
      .then((answer) => ($("session-result").textContent = `reply ${JSON.stringify(answer)}`))
      .catch((error) => report("session-result", error));
  });
  $("events-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const spec = {};
    for (const [key, value] of new FormData(event.target)) if (value) spec[key] = value;
    watch(spec).catch((error) => ($("events-watching").textContent = String(error.code ?? error)));
  });
  $("events-pause").addEventListener("click", () => {
    paused = !paused;
    $("events-pause").textContent = paused ? "Resume" : "Pause";
  });
  $("frames-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let frame;
    try {
      frame = JSON.parse(new FormData(event.target).get("frame"));
    } catch (error) {
      logFrame("invalid", String(error));
      return;
    }
    logFrame("sent", frame);
    sb.request(frame.subclass ?? "core", frame.cmd, frame.data ?? {})
      .then((answer) => logFrame("ok", answer))
      .catch((error) => logFrame("error", { code: error.code, error: error.message }));
  });
}

bind();
