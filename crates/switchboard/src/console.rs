//! The web console (`clients/console`, built into `clients/console/dist/` and embedded here),
//! served at `/console/` on a gateway's admin listener when `console = true`. It logs in over
//! the gateway's normal WebSocket with the credentials typed into it. Besides its files this
//! serves `/console/stats.json`, the deployment as the gateway sees it (the gateways the
//! registry heard from and what each holds), which the client protocol cannot tell; like
//! `/metrics`, it is for whoever may reach the admin listener.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX: &[u8] = include_bytes!("../../../clients/console/dist/index.html");
const SCRIPT: &[u8] = include_bytes!("../../../clients/console/dist/console.js");
const STYLE: &[u8] = include_bytes!("../../../clients/console/dist/console.css");

/// The console's routes; the page connects to the WebSocket port `ws_port` of the host it was
/// loaded from, and reads the deployment's figures through `gateway`.
pub fn router(ws_port: u16, gateway: Arc<switchboard_gateway::Gateway>) -> Router {
    let file = |bytes: &'static [u8], kind: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                bytes,
            )
                .into_response()
        })
    };
    let config = format!("{{\"port\":{ws_port}}}");
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", file(INDEX, "text/html; charset=utf-8"))
        .route(
            "/console/console.js",
            file(SCRIPT, "text/javascript; charset=utf-8"),
        )
        .route(
            "/console/console.css",
            file(STYLE, "text/css; charset=utf-8"),
        )
        .route(
            "/console/stats.json",
            get(move || {
                let gateway = Arc::clone(&gateway);
                async move {
                    let (code, body) =
                        match switchboard_gateway::deployment::overview(&gateway).await {
                            Ok(stats) => (StatusCode::OK, stats),
                            Err(status) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                serde_json::json!({"error": status.message()}),
                            ),
                        };
                    let json = [(header::CONTENT_TYPE, "application/json")];
                    (code, json, body.to_string()).into_response()
                }
            }),
        )
        .route(
            "/console/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], config) }
            }),
        )
}
