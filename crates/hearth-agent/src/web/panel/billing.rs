//! The billing pages' routes: a member's usage so far and invoices, one invoice, and the
//! admins' list of every member's invoices of a month with its CSV export.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_types::invoice::{Invoice, month_bounds, month_of, to_csv};
use serde::Deserialize;

use super::context::*;
use crate::api::{ApiState, unix_now};
use crate::web::invoices;

pub(super) async fn billing_home(State(state): State<ApiState>, session: Session) -> Response {
    let (month, name) = (month_of(unix_now()), session.name.clone());
    let loaded = async {
        let open: Invoice = session
            .get(&state, &format!("/v1/invoices/{month}/{name}"))
            .await?;
        let all: Vec<Invoice> = session
            .get(&state, &format!("/v1/invoices?member={name}"))
            .await?;
        Ok::<_, Response>((open, all))
    };
    match loaded.await {
        Ok((open, all)) => session.page(
            StatusCode::OK,
            invoices::member_billing(&session.chrome("/panel/billing"), &open, &all),
        ),
        Err(response) => response,
    }
}

pub(super) async fn invoice_page(
    State(state): State<ApiState>,
    Path(month): Path<String>,
    session: Session,
) -> Response {
    if let Err(message) = month_bounds(&month) {
        return session.problem(
            StatusCode::BAD_REQUEST,
            "/panel/billing",
            "No such month",
            &message,
        );
    }
    let path = format!("/v1/invoices/{month}/{}", session.name);
    match session.get::<Invoice>(&state, &path).await {
        Ok(invoice) => session.page(
            StatusCode::OK,
            invoices::invoice_page(&session.chrome("/panel/billing"), &invoice),
        ),
        Err(response) => response,
    }
}

/// `?month=YYYY-MM`, this month by default.
#[derive(Deserialize)]
pub(super) struct MonthQuery {
    #[serde(default)]
    month: Option<String>,
}

/// An admin's month (this one by default) and every member's invoice of it; the page to
/// answer instead when the caller is no admin or the month is none.
async fn month_invoices(
    state: &ApiState,
    session: &Session,
    query: MonthQuery,
) -> Result<(String, Vec<Invoice>), Box<Response>> {
    if let Some(response) = session.admin_only("/admin/billing") {
        return Err(Box::new(response));
    }
    let month = query.month.unwrap_or_else(|| month_of(unix_now()));
    if let Err(message) = month_bounds(&month) {
        return Err(Box::new(session.problem(
            StatusCode::BAD_REQUEST,
            "/admin/billing",
            "No such month",
            &message,
        )));
    }
    let invoices = session
        .get::<Vec<Invoice>>(state, &format!("/v1/invoices?month={month}"))
        .await
        .map_err(Box::new)?;
    Ok((month, invoices))
}

pub(super) async fn admin_billing(
    State(state): State<ApiState>,
    Query(query): Query<MonthQuery>,
    session: Session,
) -> Response {
    match month_invoices(&state, &session, query).await {
        Ok((month, all)) => session.page(
            StatusCode::OK,
            invoices::admin_billing(&session.chrome("/admin/billing"), &month, &all),
        ),
        Err(response) => *response,
    }
}

/// The month's invoices as CSV, for the co-op's accounting.
pub(super) async fn admin_billing_csv(
    State(state): State<ApiState>,
    Query(query): Query<MonthQuery>,
    session: Session,
) -> Response {
    match month_invoices(&state, &session, query).await {
        Ok((month, all)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"invoices-{month}.csv\""),
                ),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            to_csv(&all),
        )
            .into_response(),
        Err(response) => *response,
    }
}
