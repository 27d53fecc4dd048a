import {
  CloseCode,
  type CoreRequest,
  type EventData,
  type EventKey,
  type JsonObject,
  type Position,
  type RequestMap,
  type SubscribeSpec,
  type SwitchboardEvent,
  matches,
} from "./protocol.js";

/** The part of the WebSocket API the client uses (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `ws`'s in Node. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How a client connects, logs in and reconnects. */
export interface SwitchboardOptions {
  /** The user to log in as. */
  user: string;
  /** The password; or give `getToken`. */
  password?: string;
  /** Called for each login (and again after close code 4001) for a fresh password or token. */
  getToken?: () => string | Promise<string>;
  /** The session id to ask for on the first login (the server makes one up otherwise). */
  sessionId?: string;
  /** Stored with the session, returned by `user get`. */
  meta?: JsonObject;
  /** Default time limit of a request, in ms. */
  timeout?: number;
  /** Reconnect delays (full jitter between 0 and min·2^attempt, at most max), in ms. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** The WebSocket constructor; the global one when left out. */
  websocket?: WebSocketConstructor;
  /** How often a pending server request is acknowledged with `{"ack": tid}`, in ms. */
  ackInterval?: number;
}

/** The connection's state. */
export type ConnectionState = "disconnected" | "connecting" | "connected";

/** A request that failed: `code` is the protocol's error code, or `timeout`, `disconnected`. */
export class SwitchboardError extends Error {
  /** `session_not_found`, `unauthorized`… (PROTOCOL.md §3); `timeout`; `disconnected`. */
  readonly code: string;
  /** The error's whole `data`. */
  readonly data: unknown;

  constructor(code: string, message: string, data?: unknown) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    this.data = data;
  }
}

/** What a subscription's handler is told after a reconnect made it again. */
export interface Resubscribed {
  /** For a positioned subscription: whether every missed event is being delivered. */
  recovered?: boolean;
  /** How many events the server replays. */
  missed?: number;
}

/** Called for each event of a subscription. */
export type EventHandler = (event: SwitchboardEvent, subscription: Subscription) => void;

/** A server request to this session (`session cmd`); the handler's result is the answer. */
export interface ServerRequest {
  class: string;
  subclass: string;
  cmd: string;
  data: unknown;
}

type Listener<T> = (value: T) => void;

interface Events {
  state: ConnectionState;
  event: SwitchboardEvent;
  /** A subscription was made again after a reconnect. */
  resubscribed: { subscription: Subscription } & Resubscribed;
  /** The client stopped for good: why. */
  closed: { code: number; reason: string; error?: SwitchboardError };
  /** A login after a reconnect: the same session, or a new one when the old was gone. */
  session: { sessionId: string; resumed: boolean };
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** One subscription; made again with its last position after each reconnect. */
export class Subscription {
  /** What it subscribes to. */
  readonly spec: SubscribeSpec;
  /** The last position delivered (positioned subscriptions). */
  position: Position | undefined;
  /** Told after each reconnect whether the gap was recovered. */
  onResubscribed: ((info: Resubscribed) => void) | undefined;
  /** @internal */
  readonly handler: EventHandler;
  /** @internal */
  active = true;
  private readonly client: Switchboard;

  /** @internal */
  constructor(client: Switchboard, spec: SubscribeSpec, handler: EventHandler) {
    this.client = client;
    this.spec = spec;
    this.handler = handler;
  }

  /** Ends the subscription (on the server too, when connected). */
  async unsubscribe(): Promise<void> {
    this.active = false;
    await this.client.forget(this);
  }
}

/** Whether a delivered body carries a subscription's body (its keys, with their values). */
function carries(delivered: unknown, body: JsonObject | undefined): boolean {
  if (!body || Object.keys(body).length === 0) return true;
  if (typeof delivered !== "object" || delivered === null) return false;
  const got = delivered as JsonObject;
  return Object.keys(body).every((key) => JSON.stringify(got[key]) === JSON.stringify(body[key]));
}

/** The key fields of a spec, for `unsubscribe` and matching. */
function keyOf(spec: SubscribeSpec): EventKey {
  const key: EventKey = { class: spec.class };
  for (const field of ["subclass", "type", "obj_id", "service"] as const) {
    if (spec[field] !== undefined) key[field] = spec[field];
  }
  return key;
}

/**
 * A Switchboard client: one WebSocket, requests as promises, subscriptions that survive
 * reconnects, answers to server requests.
 *
 * ```ts
 * const sb = new Switchboard("ws://127.0.0.1:9010/api/ws", { user: "admin", password: "admin" });
 * await sb.connect();
 * await sb.subscribe({ class: "media", recover: true }, (event) => console.log(event));
 * await sb.publish({ class: "media", type: "started", body: { id: 1 } });
 * ```
 */
export class Switchboard {
  /** The connection's state; `state` events tell each change. */
  state: ConnectionState = "disconnected";
  /** The session, once logged in. */
  sessionId: string | undefined;
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly options: Required<
    Pick<SwitchboardOptions, "timeout" | "minReconnectDelay" | "maxReconnectDelay" | "ackInterval">
  > &
    SwitchboardOptions;
  private readonly Socket: WebSocketConstructor;
  private socket: WebSocketLike | undefined;
  private nextTid = 1;
  private readonly pending = new Map<number | string, Pending>();
  private readonly subscriptions = new Set<Subscription>();
  private readonly listeners = new Map<keyof Events, Set<Listener<unknown>>>();
  private commandHandler: ((request: ServerRequest) => unknown) | undefined;
  private resumeKey: string | undefined;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private stopped = true;
  private connectWaiters: Array<{ resolve: () => void; reject: (error: SwitchboardError) => void }> = [];
  private readonly service: string | undefined;
  /** Whose turn it is among the subscriptions an event's copies go to, per event key. */
  private readonly turns = new Map<string, number>();

  /**
   * @param url the gateway (`ws://host:9010/api/ws`, or `/api/ws/SERVICE`), or several to try
   *   in turn on each reconnect.
   */
  constructor(url: string | string[], options: SwitchboardOptions) {
    this.urls = Array.isArray(url) ? [...url] : [url];
    if (this.urls.length === 0) throw new TypeError("no URL");
    this.options = {
      timeout: 5000,
      minReconnectDelay: 500,
      maxReconnectDelay: 20000,
      ackInterval: 20000,
      ...options,
    };
    const Socket = options.websocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Socket) throw new TypeError("no WebSocket: pass options.websocket (e.g. the ws package)");
    this.Socket = Socket;
    this.sessionId = options.sessionId;
    const service = /\/api\/ws\/([^/?#]+)/.exec(this.urls[0]);
    this.service = service ? decodeURIComponent(service[1]) : undefined;
  }

  /** Listens to `state`, `event` (every event), `resubscribed`, `session` or `closed`. */
  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const wanted = listener as unknown as Listener<unknown>;
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(wanted);
    return () => set.delete(wanted);
  }

  private emit<K extends keyof Events>(name: K, value: Events[K]): void {
    for (const listener of this.listeners.get(name) ?? []) {
      listener(value);
    }
  }

  private setState(state: ConnectionState): void {
    if (this.state !== state) {
      this.state = state;
      this.emit("state", state);
    }
  }

  /** Connects and logs in; resolves once logged in, rejects when the first login fails. */
  connect(): Promise<void> {
    if (this.state === "connected") return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.stopped) {
      this.stopped = false;
      this.open();
    }
    return done;
  }

  /** Closes the connection for good (code 1000); pending requests are rejected. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.socket = undefined;
    this.failPending("disconnected", "closed by the client");
    socket?.close(CloseCode.Normal);
    this.setState("disconnected");
  }

  private open(): void {
    this.setState("connecting");
    const url = this.urls[this.urlIndex % this.urls.length];
    let socket: WebSocketLike;
    try {
      socket = new this.Socket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      void this.login(socket);
    };
    socket.onmessage = (message) => {
      if (this.socket === socket) this.receive(message.data);
    };
    socket.onerror = () => {};
    socket.onclose = (event) => {
      if (this.socket === socket) this.closed(event.code, event.reason);
    };
  }

  private async login(socket: WebSocketLike): Promise<void> {
    try {
      const password = this.options.getToken ? await this.options.getToken() : (this.options.password ?? "");
      const data: RequestMap["user/login"]["data"] = { user: this.options.user, password };
      if (this.sessionId) data.session_id = this.sessionId;
      if (this.resumeKey) data.resume_key = this.resumeKey;
      if (this.options.meta) data.meta = this.options.meta;
      const reply = (await this.send("user", "login", data, this.options.timeout)) as RequestMap["user/login"]["reply"];
      const resumed = this.sessionId === reply.session_id && this.resumeKey !== undefined;
      this.sessionId = reply.session_id;
      this.resumeKey = reply.resume_key;
      this.attempt = 0;
      this.setState("connected");
      if (this.connectWaiters.length === 0) this.emit("session", { sessionId: reply.session_id, resumed });
      for (const waiter of this.connectWaiters.splice(0)) waiter.resolve();
      await this.resubscribeAll();
    } catch (error) {
      if (this.socket !== socket) return;
      const failure = error instanceof SwitchboardError ? error : new SwitchboardError("internal_error", String(error));
      if (this.connectWaiters.length > 0 && failure.code !== "disconnected" && failure.code !== "unavailable") {
        // The first login was refused: nothing to retry.
        this.stopWith(CloseCode.Normal, "login refused", failure);
        return;
      }
      socket.close(CloseCode.Normal);
    }
  }

  private async resubscribeAll(): Promise<void> {
    for (const subscription of this.subscriptions) {
      if (!subscription.active) continue;
      const spec = { ...subscription.spec } as RequestMap["event/subscribe"]["data"];
      if (subscription.spec.recover) {
        (spec as { recover: unknown }).recover = subscription.position
          ? { epoch: subscription.position.epoch, offset: subscription.position.offset }
          : true;
      }
      try {
        const reply = (await this.send("event", "subscribe", spec, this.options.timeout)) as RequestMap["event/subscribe"]["reply"];
        this.adoptPosition(subscription, reply);
        const info: Resubscribed = {};
        if (subscription.spec.recover) {
          info.recovered = reply.recovered ?? false;
          info.missed = reply.missed;
        }
        subscription.onResubscribed?.(info);
        this.emit("resubscribed", { subscription, ...info });
      } catch {
        // The connection went again: the next login subscribes once more.
        return;
      }
    }
  }

  /** A positioned subscription's reply: the stream to follow, and where it stands. */
  private adoptPosition(subscription: Subscription, reply: RequestMap["event/subscribe"]["reply"]): void {
    if (reply.stream === undefined || reply.epoch === undefined) return;
    const replayed = reply.recovered === true && subscription.position?.epoch === reply.epoch;
    if (!replayed) {
      // A new epoch, or nothing recovered: follow from the stream's top.
      subscription.position = { stream: reply.stream, epoch: reply.epoch, offset: reply.offset ?? 0 };
    }
  }

  private closed(code: number, reason: string): void {
    this.socket = undefined;
    this.failPending("disconnected", `connection closed (${code})`);
    if (this.stopped) return;
    switch (code) {
      case CloseCode.TakenOver:
        this.stopWith(code, reason || "session taken over elsewhere");
        return;
      case CloseCode.Policy:
      case CloseCode.TooBig:
        this.stopWith(code, reason, new SwitchboardError("closed", `closed by the server: ${code} ${reason}`));
        return;
      case CloseCode.Normal:
        if (this.state === "connected") {
          // `session stop`: the server ended this session.
          this.stopWith(code, reason || "session stopped");
          return;
        }
        break;
      default:
        break;
    }
    // 4001 (token expired) logs in again with a fresh getToken(); 1001, 1006 and the rest
    // reconnect after a backoff.
    this.scheduleReconnect();
  }

  private stopWith(code: number, reason: string, error?: SwitchboardError): void {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.socket = undefined;
    socket?.close(CloseCode.Normal);
    this.failPending("disconnected", reason);
    this.setState("disconnected");
    for (const waiter of this.connectWaiters.splice(0)) {
      waiter.reject(error ?? new SwitchboardError("disconnected", reason));
    }
    this.emit("closed", { code, reason, error });
  }

  private scheduleReconnect(): void {
    this.setState("connecting");
    const ceiling = Math.min(this.options.maxReconnectDelay, this.options.minReconnectDelay * 2 ** this.attempt);
    this.attempt += 1;
    this.urlIndex += 1;
    const delay = Math.random() * ceiling;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (!this.stopped) this.open();
    }, delay);
  }

  private failPending(code: string, message: string): void {
    for (const [tid, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new SwitchboardError(code, message));
      this.pending.delete(tid);
    }
  }

  private send(subclass: string, cmd: string, data: unknown, timeout: number): Promise<unknown> {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) {
      return Promise.reject(new SwitchboardError("disconnected", "not connected"));
    }
    const tid = this.nextTid++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(tid);
        reject(new SwitchboardError("timeout", `no answer to ${subclass} ${cmd} within ${timeout} ms`));
      }, timeout);
      this.pending.set(tid, { resolve, reject, timer });
      socket.send(JSON.stringify({ class: "core", subclass, cmd, data, tid }));
    });
  }

  /**
   * Sends a request of class `core` and resolves with its answer's `data`; rejects with a
   * {@link SwitchboardError} carrying the protocol `code` (or `timeout`, `disconnected`).
   */
  async request(subclass: string, cmd: string, data: unknown = {}, options: { timeout?: number } = {}): Promise<unknown> {
    if (this.state !== "connected") throw new SwitchboardError("disconnected", "not connected");
    return this.send(subclass, cmd, data, options.timeout ?? this.options.timeout);
  }

  /** {@link Switchboard.request}, typed by the request's name: `call("user/get", {user})`. */
  async call<K extends CoreRequest>(
    name: K,
    data: RequestMap[K]["data"],
    options: { timeout?: number } = {},
  ): Promise<RequestMap[K]["reply"]> {
    const [subclass, cmd] = name.split("/");
    return (await this.request(subclass, cmd, data, options)) as RequestMap[K]["reply"];
  }

  /** Every logged-in user with their session ids. */
  userList(): Promise<RequestMap["user/list"]["reply"]> {
    return this.call("user/list", {});
  }

  /** A user's sessions: type, remote address, meta. */
  userGet(user: string): Promise<RequestMap["user/get"]["reply"]> {
    return this.call("user/get", { user });
  }

  /** Fires `core/user_event/<type>/<user>`: every session of the user gets it. */
  async sendToUser(user: string, type = "*", body: unknown = {}): Promise<void> {
    await this.request("user", "send_event", { user, type, body });
  }

  /** Fires `core/session_event/<type>/<session_id>`: only that session gets it. */
  async sendToSession(sessionId: string, type = "*", body: unknown = {}): Promise<void> {
    await this.request("session", "send_event", { session_id: sessionId, type, body });
  }

  /** Disconnects a session wherever it is; resolves with its user. */
  async stopSession(sessionId: string): Promise<string> {
    const reply = (await this.request("session", "stop", { session_id: sessionId })) as { user: string };
    return reply.user;
  }

  /** Sends a request to another session and resolves with its answer (`session cmd`). */
  cmd(
    sessionId: string,
    cls: string,
    cmd: string,
    data: unknown = {},
    options: { subclass?: string; timeout?: number } = {},
  ): Promise<unknown> {
    const request: JsonObject = { session_id: sessionId, class: cls, cmd, data };
    if (options.subclass) request.subclass = options.subclass;
    // The target has 30 s (more with acks); wait a little longer than the server does.
    return this.request("session", "cmd", request, { timeout: options.timeout ?? 35000 });
  }

  /** Publishes an event (`event send_event`). */
  async publish(event: EventKey & { body?: unknown }): Promise<void> {
    await this.request("event", "send_event", event);
  }

  /** Sends a `session log` record (GELF). */
  async log(source: string, message: string, options: { level?: number; fullMessage?: string; meta?: JsonObject } = {}): Promise<void> {
    const data: JsonObject = { source, message };
    if (options.level !== undefined) data.level = options.level;
    if (options.fullMessage !== undefined) data.full_message = options.fullMessage;
    if (options.meta !== undefined) data.meta = options.meta;
    await this.request("session", "log", data);
  }

  /** The server's clock, in ms since the epoch. */
  async ping(): Promise<number> {
    const reply = (await this.request("session", "ping", {})) as { now: number };
    return reply.now;
  }

  /**
   * Subscribes; `handler` gets each matching event. The subscription is made again after
   * every reconnect, a positioned one (`recover: true`) from its last position, so the events
   * missed meanwhile arrive first, in order, once each; `subscription.onResubscribed` (or the
   * client's `resubscribed` event) tells whether they could be recovered.
   */
  async subscribe(spec: SubscribeSpec, handler: EventHandler): Promise<Subscription> {
    const subscription = new Subscription(this, { ...spec }, handler);
    const reply = (await this.request("event", "subscribe", spec as RequestMap["event/subscribe"]["data"])) as RequestMap["event/subscribe"]["reply"];
    this.adoptPosition(subscription, reply);
    this.subscriptions.add(subscription);
    return subscription;
  }

  /** @internal */
  async forget(subscription: Subscription): Promise<void> {
    this.subscriptions.delete(subscription);
    if (this.state === "connected") await this.request("event", "unsubscribe", keyOf(subscription.spec));
  }

  /**
   * Answers server requests (`session cmd` aimed at this session): the handler's value (or
   * promise) is the answer; a thrown {@link SwitchboardError} answers its code. While it runs,
   * `{"ack": tid}` is sent every `ackInterval` so that the caller keeps waiting.
   */
  onCommand(handler: (request: ServerRequest) => unknown): void {
    this.commandHandler = handler;
  }

  private receive(raw: unknown): void {
    let frame: JsonObject;
    try {
      frame = JSON.parse(String(raw)) as JsonObject;
    } catch {
      return;
    }
    if ("result" in frame) {
      const pending = this.pending.get(frame.tid as number);
      if (!pending) return;
      this.pending.delete(frame.tid as number);
      clearTimeout(pending.timer);
      if (frame.result === "ok") {
        pending.resolve(frame.data ?? {});
      } else {
        const data = (frame.data ?? {}) as { code?: string; error?: string };
        pending.reject(new SwitchboardError(data.code ?? "internal_error", data.error ?? "error", frame.data));
      }
      return;
    }
    if (frame.cmd === "event" && frame.class === "core") {
      this.deliver({ ...(frame.data as EventData), ...(frame.pos ? { pos: frame.pos as Position } : {}) });
      return;
    }
    if (typeof frame.cmd === "string" && typeof frame.class === "string" && frame.tid !== undefined) {
      void this.answer(frame);
    }
  }

  private deliver(event: SwitchboardEvent): void {
    this.emit("event", event);
    if (event.pos) {
      // A positioned event belongs to the subscription following its stream.
      for (const subscription of this.subscriptions) {
        const position = subscription.position;
        if (!subscription.active || !subscription.spec.recover || position?.stream !== event.pos.stream) continue;
        if (position.epoch === event.pos.epoch && event.pos.offset <= position.offset) return;
        subscription.position = { ...event.pos };
        subscription.handler(event, subscription);
        return;
      }
      return;
    }
    // The server sends one copy of an event per matching subscription, each with that
    // subscription's body merged in: each copy goes to one subscription. Copies of one event
    // arrive together, so those that could have sent it take turns.
    const candidates = [...this.subscriptions].filter(
      (subscription) =>
        subscription.active && !subscription.spec.recover && matches(keyOf(subscription.spec), event, this.service),
    );
    // A copy carrying a subscription's own body came from it (or from one like it).
    const hasBody = (subscription: Subscription) => Object.keys(subscription.spec.body ?? {}).length > 0;
    const withBody = candidates.filter((s) => hasBody(s) && carries(event.body, s.spec.body));
    const plain = candidates.filter((s) => !hasBody(s));
    const pool = withBody.length > 0 ? withBody : plain.length > 0 ? plain : candidates;
    if (pool.length === 0) return;
    const fingerprint = JSON.stringify([event.service, event.class, event.subclass, event.type, event.obj_id]);
    const turn = this.turns.get(fingerprint) ?? 0;
    this.turns.set(fingerprint, (turn + 1) % pool.length);
    if (this.turns.size > 1000) this.turns.clear();
    const subscription = pool[turn % pool.length];
    subscription.handler(event, subscription);
  }

  private async answer(frame: JsonObject): Promise<void> {
    const tid = frame.tid as number | string;
    const socket = this.socket;
    const reply = (body: JsonObject) => {
      if (socket && socket.readyState === 1) socket.send(JSON.stringify({ ...body, tid }));
    };
    if (!this.commandHandler) {
      reply({ result: "error", data: { code: "unknown_command", error: "this client answers no requests" } });
      return;
    }
    const ack = setInterval(() => {
      if (socket && socket.readyState === 1) socket.send(JSON.stringify({ ack: tid }));
    }, this.options.ackInterval);
    try {
      const data = await this.commandHandler({
        class: frame.class as string,
        subclass: (frame.subclass as string | undefined) ?? "core",
        cmd: frame.cmd as string,
        data: frame.data ?? {},
      });
      reply({ result: "ok", data: data ?? {} });
    } catch (error) {
      const code = error instanceof SwitchboardError ? error.code : "internal_error";
      reply({ result: "error", data: { code, error: error instanceof Error ? error.message : String(error) } });
    } finally {
      clearInterval(ack);
    }
  }
}
