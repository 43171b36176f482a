//! `/v1/plans`: members' plans (quotas), and `/v1/accounts/NAME/plan`: an account's plan and
//! its own limits. Admins only; a member reads their own in `/v1/me`.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use hearth_state::model::{Command, Expect};
use hearth_types::api::{PlanRow, PutPlan, SetPlan};

use super::context::{ApiState, Params, bad_body, error, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/plans", get(list_plans).put(put_plan))
        .route("/v1/plans/{name}", delete(remove_plan))
        .route("/v1/accounts/{name}/plan", put(set_plan))
}

async fn list_plans(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<PlanRow> = desired
                .plans
                .values()
                .map(|p| PlanRow {
                    plan: p.value.clone(),
                    version: p.version,
                })
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn put_plan(
    State(state): State<ApiState>,
    body: Result<Body<PutPlan>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(PutPlan { plan, expect })) => {
            let policy = plan.backup.as_ref().map(super::backups::check_policy);
            if let Some(Err(why)) = policy {
                return error(StatusCode::BAD_REQUEST, &format!("backup.{why}"));
            }
            write(
                &state,
                Command::PutPlan {
                    plan: Box::new(plan),
                    expect,
                },
            )
            .await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_plan(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(&state, Command::RemovePlan { name, expect }).await
}

/// Puts an account on a plan, with limits of its own, compare-and-set on its version.
async fn set_plan(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Body<SetPlan>, BodyRejection>,
) -> Response {
    let SetPlan { plan, quota } = match body {
        Ok(Body(body)) => body,
        Err(rejection) => return bad_body(rejection),
    };
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let Some(current) = desired.accounts.get(&name) else {
        return error(StatusCode::NOT_FOUND, &format!("name: no account {name}"));
    };
    if let Some(plan) = plan.as_deref().filter(|p| !desired.plans.contains_key(*p)) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("plan: no plan named {plan}; make it with PUT /v1/plans"),
        );
    }
    let mut account = current.value.clone();
    account.plan = plan;
    account.quota = quota;
    write(
        &state,
        Command::PutAccount {
            account,
            expect: Expect::Version(current.version),
            revoke_tokens: false,
        },
    )
    .await
}
