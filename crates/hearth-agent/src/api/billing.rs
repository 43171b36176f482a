//! `/v1/invoices`, `/v1/usage` and `/v1/credits`: members' invoices (the closed ones as the
//! state keeps them, and the open one of a month as it stands), the usage rows behind them,
//! an admin's closing of an ended month and credits. A member sees only their own.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hearth_state::model::Command;
use hearth_types::api::{DeliveryRow, NewCredit};
use hearth_types::desired::DesiredState;
use hearth_types::invoice::{Credit, Invoice, current, invoice_key, month_bounds, month_of};
use hearth_types::metering::UsageRow;
use serde::Deserialize;

use super::body::{Body, BodyRejection};
use super::context::{ApiState, Params, bad_body, error, first_unknown, read, unix_now, write};
use crate::auth::Caller;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/invoices", get(list))
        .route("/v1/invoices/{month}/{member}", get(show))
        .route("/v1/invoices/{month}/close", post(close))
        .route("/v1/invoices/{month}/{member}/redeliver", post(redeliver))
        .route("/v1/invoice-deliveries", get(deliveries))
        .route("/v1/usage", get(usage))
        .route("/v1/credits", post(credit))
}

/// `?member=NAME&month=YYYY-MM`, both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    month: Option<String>,
}

/// Why a request cannot be answered: its status and message.
type Refusal = (StatusCode, String);

fn refused((status, message): Refusal) -> Response {
    error(status, &message)
}

/// The member a caller may ask about: a member only about themselves.
fn whose(
    caller: &Option<Extension<Caller>>,
    asked: Option<String>,
) -> Result<Option<String>, Refusal> {
    match caller.as_ref().and_then(|Extension(c)| c.only_owner()) {
        Some(owner) => match asked {
            Some(asked) if asked != owner => Err((
                StatusCode::NOT_FOUND,
                format!("member: no invoices of {asked}"),
            )),
            _ => Ok(Some(owner.to_owned())),
        },
        None => Ok(asked),
    }
}

/// The month asked, or this one; 400 for one that is not a month.
fn month_or_now(month: Option<String>) -> Result<String, Refusal> {
    let month = month.unwrap_or_else(|| month_of(unix_now()));
    month_bounds(&month).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    Ok(month)
}

/// The invoices of the filter: closed ones, and for the month asked (this one by default)
/// the open invoice of every member with usage not yet billed.
pub fn invoices(
    desired: &DesiredState,
    member: Option<&str>,
    month: Option<&str>,
    now_s: u64,
) -> Vec<Invoice> {
    let billing = &desired.billing;
    let mut out: Vec<Invoice> = billing
        .invoices
        .values()
        .filter(|i| member.is_none_or(|m| i.member == m) && month.is_none_or(|m| i.month == m))
        .cloned()
        .collect();
    let open_month = month.map_or_else(|| month_of(now_s), str::to_owned);
    if !billing.closed.contains(&open_month) {
        let mut members: Vec<&str> = billing
            .usage
            .values()
            .filter(|r| r.billed_in.is_none())
            .map(|r| r.owner.as_str())
            .chain(
                billing
                    .credits
                    .values()
                    .filter(|c| c.billed_in.is_none())
                    .map(|c| c.member.as_str()),
            )
            .filter(|m| member.is_none_or(|wanted| wanted == *m))
            .collect();
        members.sort_unstable();
        members.dedup();
        for who in members {
            let prices = hearth_state::model::prices_of(desired, who);
            if let Ok(invoice) = current(billing, who, &open_month, prices.as_ref())
                && !invoice.lines.is_empty()
            {
                out.push(invoice);
            }
        }
    }
    out
}

/// The member (a member: themselves) and the month (checked) a filter asks for.
fn asked(
    caller: &Option<Extension<Caller>>,
    filter: Filter,
) -> Result<(Option<String>, Option<String>), Refusal> {
    let member = whose(caller, filter.member)?;
    if let Some(month) = &filter.month {
        month_bounds(month).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    }
    Ok((member, filter.month))
}

async fn list(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Query(filter): Query<Filter>,
) -> Response {
    let (member, month) = match asked(&caller, filter) {
        Ok(asked) => asked,
        Err(refusal) => return refused(refusal),
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => Json(invoices(
            &desired,
            member.as_deref(),
            month.as_deref(),
            unix_now(),
        ))
        .into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn show(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((month, member)): Path<(String, String)>,
) -> Response {
    let member = match whose(&caller, Some(member)) {
        Ok(member) => member.unwrap_or_default(),
        Err(refusal) => return refused(refusal),
    };
    let month = match month_or_now(Some(month)) {
        Ok(month) => month,
        Err(refusal) => return refused(refusal),
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            let closed = desired.billing.closed.contains(&month);
            if closed
                && !desired
                    .billing
                    .invoices
                    .contains_key(&invoice_key(&month, &member))
            {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("invoice: {member} has no invoice for {month}, which is closed"),
                );
            }
            let prices = hearth_state::model::prices_of(&desired, &member);
            match current(&desired.billing, &member, &month, prices.as_ref()) {
                Ok(invoice) => Json(invoice).into_response(),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        Err(failure) => failure.into_response(),
    }
}

/// The usage rows of the filter, oldest first (this month's by default).
async fn usage(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Query(filter): Query<Filter>,
) -> Response {
    let (member, month) = match asked(&caller, filter) {
        Ok((member, month)) => (member, month.unwrap_or_else(|| month_of(unix_now()))),
        Err(refusal) => return refused(refusal),
    };
    let Ok((start, end)) = month_bounds(&month) else {
        return error(StatusCode::BAD_REQUEST, "month");
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            let rows: Vec<&UsageRow> = desired
                .billing
                .usage
                .values()
                .filter(|r| (start..end).contains(&r.start_s))
                .filter(|r| member.as_deref().is_none_or(|m| r.owner == m))
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// Each closed invoice's webhook delivery and email, oldest invoice first.
async fn deliveries(State(state): State<ApiState>) -> Response {
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            let rows: Vec<DeliveryRow> = desired
                .billing
                .invoices
                .iter()
                .map(|(key, invoice)| DeliveryRow {
                    month: invoice.month.clone(),
                    member: invoice.member.clone(),
                    delivery: desired
                        .billing
                        .deliveries
                        .get(key)
                        .cloned()
                        .unwrap_or_default(),
                    mail: desired.billing.mails.get(key).cloned().unwrap_or_default(),
                })
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// Sends a closed invoice to the webhook again: its delivery starts over.
async fn redeliver(
    State(state): State<ApiState>,
    Path((month, member)): Path<(String, String)>,
) -> Response {
    let key = invoice_key(&month, &member);
    write(
        &state,
        Command::RecordWebhook {
            key,
            delivery: Default::default(),
        },
    )
    .await
}

async fn close(State(state): State<ApiState>, Path(month): Path<String>) -> Response {
    if let Err(e) = month_bounds(&month) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let at_ms = unix_now().saturating_mul(1000);
    write(&state, Command::CloseMonth { month, at_ms }).await
}

async fn credit(
    State(state): State<ApiState>,
    body: Result<Body<NewCredit>, BodyRejection>,
) -> Response {
    let NewCredit {
        member,
        amount,
        reason,
    } = match body {
        Ok(Body(body)) => body,
        Err(rejection) => return bad_body(rejection),
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            if let Some(missing) = first_unknown(&desired, [("member", "account", member.as_str())])
            {
                return missing;
            }
        }
        Err(failure) => return failure.into_response(),
    }
    let credit = Credit {
        id: 0,
        member,
        amount,
        reason,
        at_ms: unix_now().saturating_mul(1000),
        billed_in: None,
    };
    write(&state, Command::AddCredit { credit }).await
}
