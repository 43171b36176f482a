//! `/v1/hosts`: the workers, their capacity, what is placed on them, and whether the others
//! could hold it all (the N+1 check).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use hearth_compute::placement::evacuation_check;
use hearth_types::api::HostRow;

use super::context::{ApiState, Params, read};

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/hosts", get(list_hosts))
}

async fn list_hosts(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let view = state.membership.views().borrow().clone();
            let rows: Vec<_> = desired
                .compute
                .hosts
                .iter()
                .map(|(name, host)| {
                    let vms = desired
                        .compute
                        .vms
                        .values()
                        .filter(|vm| vm.value.host.as_deref() == Some(name.as_str()))
                        .count();
                    HostRow {
                        name: name.clone(),
                        capacity: host.capacity,
                        fenced: host.fenced,
                        state: view.members.get(name).map(|m| m.state),
                        vms,
                        placed: hearth_types::quota::placed(&desired.compute, name),
                        evacuation: host.evacuation.clone(),
                        cannot_evacuate: evacuation_check(&desired, &view, name).err(),
                    }
                })
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}
