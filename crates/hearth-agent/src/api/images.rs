//! `/v1/images` and `/v1/blobs`: VM images and the upload of their files, verified by hash.

use super::body::{Body, BodyRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use hearth_state::model::ComputeCommand;

use hearth_types::api::PutImage;

use super::context::{ApiState, Params, bad_body, compute, error, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/images", get(list_images).put(put_image))
        .route("/v1/images/{name}", delete(remove_image))
        .route(
            "/v1/blobs/{sha256}",
            put(upload_blob).layer(DefaultBodyLimit::disable()),
        )
}

async fn list_images(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.compute.images).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_image(
    State(state): State<ApiState>,
    body: Result<Body<PutImage>, BodyRejection>,
) -> Response {
    let Body(PutImage { image, expect }) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if let Err(message) = image.validate() {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    // The files must be here first, so that a worker can always find a copy.
    if let Some(missing) = image.blobs().find(|b| !state.blobs.has(&b.sha256)) {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "sha256: no file with sha256 {} was uploaded to this node; PUT it to /v1/blobs/{} first",
                missing.sha256, missing.sha256
            ),
        );
    }
    write(&state, compute(ComputeCommand::PutImage { image, expect })).await
}

async fn remove_image(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(
        &state,
        compute(ComputeCommand::RemoveImage { name, expect }),
    )
    .await
}

/// Streams the body into the local image store; it gets its name only if its sha256 matches.
async fn upload_blob(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Response {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "sha256: give 64 lowercase hex digits",
        );
    }
    if state.blobs.has(&sha256) {
        // Read the body to its end all the same: a client still sending it would otherwise
        // see its connection reset (a new version of an image re-sends its kernel, say).
        let mut stream = body.into_data_stream();
        while let Some(Ok(_)) = stream.next().await {}
        return (
            StatusCode::OK,
            Json(serde_json::json!({ "sha256": sha256, "stored": "already" })),
        )
            .into_response();
    }
    let mut writer = match state.blobs.writer(&sha256) {
        Ok(writer) => writer,
        Err(failure) => return error(StatusCode::INTERNAL_SERVER_ERROR, &failure.to_string()),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let result = match chunk {
            Ok(bytes) => writer.write(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("the upload broke off: {e}")),
        };
        if let Err(message) = result {
            writer.abort();
            return error(StatusCode::BAD_REQUEST, &message);
        }
    }
    let size = writer.written();
    match writer.finish() {
        Ok(_) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "sha256": sha256, "size_bytes": size })),
        )
            .into_response(),
        Err(failure) => error(StatusCode::BAD_REQUEST, &format!("body: {failure}")),
    }
}
