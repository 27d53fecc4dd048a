/**
 * Switchboard's client SDK. Works in browsers (no dependency) and in Node ≥ 18 with a
 * WebSocket constructor passed as `options.websocket` (the `ws` package).
 *
 * @packageDocumentation
 */
export {
  Switchboard,
  Subscription,
  SwitchboardError,
  type ConnectionState,
  type EventHandler,
  type Resubscribed,
  type ServerRequest,
  type SwitchboardOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export {
  CloseCode,
  matches,
  type CoreRequest,
  type EventData,
  type EventKey,
  type JsonObject,
  type Position,
  type RequestFrame,
  type RequestMap,
  type ResponseFrame,
  type SubscribeSpec,
  type SwitchboardEvent,
} from "./protocol.js";
