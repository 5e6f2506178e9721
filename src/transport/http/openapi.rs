//! `GET /v1/openapi.json`: the OpenAPI 3 document of the HTTP API, kept in `docs/openapi.json`
//! and compiled in, so the served document is always the reviewed one.

use hyper::Response;

use super::response::{Body, respond};

const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// The document.
pub fn document() -> Response<Body> {
    respond(200, "application/json", DOCUMENT)
}
