//! The web console (`clients/console`, built into `clients/console/dist/` and embedded here),
//! served at `/console/` on a gateway's admin listener when `console = true`. It logs in over
//! the gateway's normal WebSocket with the credentials typed into it; this only serves files.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX: &[u8] = include_bytes!("../../../clients/console/dist/index.html");
const SCRIPT: &[u8] = include_bytes!("../../../clients/console/dist/console.js");
const STYLE: &[u8] = include_bytes!("../../../clients/console/dist/console.css");

/// The console's routes; the page connects to the WebSocket port `ws_port` of the host it was
/// loaded from.
pub fn router(ws_port: u16) -> Router {
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
            "/console/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], config) }
            }),
        )
}
