//! The panel's static files, built into the binary so the panel needs no network at run
//! time: xterm.js and its style sheet (vendored from npm with their licence, see
//! `assets/xterm/README.md`) and the terminal page's own script.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// `(name under /assets/, content type, bytes)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/xterm/xterm.js"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/xterm/xterm.css"),
    ),
    (
        "xterm-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/xterm/LICENSE"),
    ),
    (
        "terminal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/terminal.js"),
    ),
];

pub fn routes() -> Router<crate::api::ApiState> {
    Router::new().route("/assets/{name}", get(asset))
}

/// One static file, cached for a day (a new release may change it).
async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(known, _, _)| *known == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *bytes,
        )
            .into_response(),
        None => crate::api::error(StatusCode::NOT_FOUND, "no such asset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_widget_comes_with_its_licence() {
        let licence = ASSETS
            .iter()
            .find(|(name, _, _)| *name == "xterm-LICENSE.txt")
            .unwrap();
        let text = String::from_utf8_lossy(licence.2);
        assert!(text.contains("The xterm.js authors"), "{text}");
        assert!(text.contains("Permission is hereby granted"), "{text}");
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name}");
        }
    }
}
