//! The web UI: plain HTML, CSS and JavaScript embedded in the binary, so
//! it works offline and needs no build step. It logs in with SCRAM computed
//! by WebCrypto (`scram.js`), talks JSON to `/v1` for accounts and history,
//! and native frames over `/v1/ws` for live delivery (`proto.js`).
//! `/pager` is the web pager's form for visitors without an account.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::HttpContext;

/// Every asset: path, media type, contents.
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("/pager", "text/html; charset=utf-8", include_str!("../ui/pager.html")),
    (
        "/ui/pager.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/pager.js"),
    ),
    ("/ui/app.css", "text/css; charset=utf-8", include_str!("../ui/app.css")),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
    (
        "/ui/proto.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/proto.js"),
    ),
    (
        "/ui/scram.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/scram.js"),
    ),
    ("/ui/icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
];

/// Only our own origin: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(media_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Adds the asset routes.
pub fn routes(mut router: Router<Arc<HttpContext>>) -> Router<Arc<HttpContext>> {
    for &(path, media_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(media_type, body) }));
    }
    router
}
