//! The OpenAPI 3 document of the HTTP API, written by hand in
//! `openapi.json` and served at `/v1/openapi.json`. Tests keep it in sync:
//! every route of [`crate::api_routes`] is in the document and every
//! operation of the document is a route, and schemathesis checks every
//! response against it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

pub async fn document() -> Response {
    let mut response = DOCUMENT.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The router and the document name the same operations.
    #[test]
    fn every_route_is_documented_and_every_operation_is_routed() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = crate::api_routes()
            .into_iter()
            .map(|(method, path, _)| (method.as_str().to_owned(), path.to_owned()))
            .collect();
        assert_eq!(routed, documented);
    }

    /// Every `$ref` points at something that exists, and every operation
    /// has an id and a default problem response.
    #[test]
    fn references_resolve() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("JSON");
        fn walk(v: &serde_json::Value, doc: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                        let pointer = r.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                assert!(op["operationId"].is_string(), "{method} {path}");
                assert!(
                    op["responses"]["default"].is_object(),
                    "{method} {path}: no default response"
                );
            }
        }
    }
}
