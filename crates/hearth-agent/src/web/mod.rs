//! Server-rendered HTML: small pages that work on a phone and without JavaScript. The page
//! builders are pure functions over data; the routes only gather that data.

pub mod assets;
pub mod backups;
pub mod html;
pub mod invoices;
pub mod pages;
pub mod panel;
pub mod public;
pub mod session;
pub mod signup;
pub mod status;
pub mod svg;
pub mod zones;

pub use html::{escape, page, security_headers, utc};

/// The panel's pages and forms, and the public status page.
pub fn routes() -> axum::Router<crate::api::ApiState> {
    axum::Router::new()
        .merge(panel::routes())
        .merge(public::routes())
        .merge(assets::routes())
}
