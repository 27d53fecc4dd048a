/**
 * The frames of Switchboard's client protocol (docs/PROTOCOL.md) and the typed maps of its
 * `core` requests.
 */

/** A JSON object. */
export type JsonObject = { [key: string]: unknown };

/** Where an event stands in its stream (PROTOCOL.md §10). */
export interface Position {
  /** The stream's name: the same for every subscription with the same key. */
  stream: string;
  /** The stream's epoch: a position is only comparable within one epoch. */
  epoch: string;
  /** The event's offset; offsets in an epoch have no gaps. */
  offset: number;
}

/** An event's key and body (PROTOCOL.md §2, "Event"). */
export interface EventData {
  class: string;
  /** Absent when the event did not set it (`*`). */
  subclass?: string;
  type?: string;
  obj_id?: string;
  /** Present only when the event belongs to another service than the connection's. */
  service?: string;
  body?: unknown;
}

/** An event as delivered, with its position when a positioned subscription delivered it. */
export interface SwitchboardEvent extends EventData {
  pos?: Position;
}

/** What `subscribe`, `unsubscribe` and `publish` name. */
export interface EventKey {
  class: string;
  subclass?: string;
  type?: string;
  obj_id?: string;
  service?: string;
}

/** A subscription: a key, a body merged into each event, and whether it is positioned. */
export interface SubscribeSpec extends EventKey {
  body?: JsonObject;
  /** Positioned (PROTOCOL.md §10): events carry `pos`, and a reconnect recovers what it missed. */
  recover?: boolean;
}

/** The request frame. */
export interface RequestFrame {
  class: string;
  subclass?: string;
  cmd: string;
  data?: unknown;
  tid: number | string;
}

/** The answer of `session cmd` and every other request. */
export interface ResponseFrame {
  result: "ok" | "error";
  data?: unknown;
  tid: number | string;
}

/** The data of each `core` request and of its answer. */
export interface RequestMap {
  "user/login": {
    data: { user: string; password: string; session_id?: string; resume_key?: string; meta?: JsonObject };
    reply: { session_id: string; resume_key: string; expires_at?: number };
  };
  "user/list": { data: Record<string, never>; reply: Record<string, string[]> };
  "user/get": {
    data: { user: string };
    reply: Record<string, { type: string; remote: string; meta?: JsonObject }>;
  };
  "user/send_event": { data: { user: string; type?: string; body?: unknown }; reply: JsonObject };
  "session/stop": { data: { session_id: string }; reply: { user: string } };
  "session/send_event": { data: { session_id: string; type?: string; body?: unknown }; reply: JsonObject };
  "session/cmd": {
    data: { session_id: string; class: string; subclass?: string; cmd: string; data?: unknown };
    reply: unknown;
  };
  "session/log": {
    data: { source: string; message: string; level?: number; full_message?: string; meta?: JsonObject };
    reply: JsonObject;
  };
  "session/ping": { data: Record<string, never>; reply: { now: number } };
  "event/subscribe": {
    data: SubscribeSpec | (Omit<SubscribeSpec, "recover"> & { recover: { epoch: string; offset: number } });
    reply: Partial<Position> & { recovered?: boolean; missed?: number };
  };
  "event/unsubscribe": { data: EventKey; reply: JsonObject };
  "event/get_subscriptions": { data: Record<string, never>; reply: Array<EventKey & { body?: JsonObject }> };
  "event/send_event": { data: EventKey & { body?: unknown }; reply: JsonObject };
}

/** A `core` request's name, `subclass/cmd`. */
export type CoreRequest = keyof RequestMap;

/** Close codes with a meaning for the client (PROTOCOL.md §1). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  Policy: 1008,
  TooBig: 1009,
  TokenExpired: 4001,
  TakenOver: 4002,
} as const;

/** Whether an event with `event`'s key reaches a subscription to `key` (PROTOCOL.md §6). */
export function matches(key: EventKey, event: EventData, connectionService: string | undefined): boolean {
  const service = (s: string | undefined) => s ?? connectionService ?? "";
  if (service(key.service) !== service(event.service) || key.class !== event.class) {
    return false;
  }
  const field = (want: string | undefined, got: string | undefined) =>
    want === undefined || want === "*" || want === (got ?? "*");
  return field(key.subclass, event.subclass) && field(key.type, event.type) && field(key.obj_id, event.obj_id);
}
