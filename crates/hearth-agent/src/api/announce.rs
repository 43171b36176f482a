//! `/v1/announce`: mail to every member with a VM (admins only), through `[smtp]`.

use super::body::{Body, BodyRejection};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use hearth_types::api::Announcement;

use super::context::{ApiState, Params, bad_body, error, read};

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/announce", post(announce))
}

/// Emails every member who owns a VM, through this node's `[smtp]` server.
async fn announce(
    State(state): State<ApiState>,
    body: Result<Body<Announcement>, BodyRejection>,
) -> Response {
    let Body(Announcement { subject, body }) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if subject.trim().is_empty() || subject.chars().count() > 200 || subject.contains(['\r', '\n'])
    {
        return error(
            StatusCode::BAD_REQUEST,
            "subject: give 1 to 200 characters on one line",
        );
    }
    if body.trim().is_empty() || body.chars().count() > 65536 {
        return error(StatusCode::BAD_REQUEST, "body: give 1 to 65536 characters");
    }
    let Some(mail) = state.mail.clone() else {
        return error(
            StatusCode::CONFLICT,
            "smtp: this node sends no email; add an [smtp] section (server, from) to its config",
        );
    };
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let recipients = crate::mail::recipients(&desired);
    let report = crate::mail::announce(&mail, recipients, subject.trim(), &body).await;
    Json(report).into_response()
}
