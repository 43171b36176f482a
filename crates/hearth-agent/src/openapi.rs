//! The OpenAPI 3.1 description of the HTTP API, served at `/v1/openapi.json` (no token). The
//! endpoint list is data; a test reads the route tables in the sources and fails when a route
//! is added, removed or changed without this list following.

use serde_json::{Map, Value, json};

/// One operation: method, path (axum's `{param}` syntax, which is also OpenAPI's), summary,
/// and whether it needs a token.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub token: bool,
}

const fn op(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        token: true,
    }
}

const fn public(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        token: false,
    }
}

pub const ENDPOINTS: &[Endpoint] = &[
    op(
        "get",
        "/v1/members",
        "The cluster's members as this node sees them",
    ),
    op(
        "get",
        "/v1/services",
        "Every service instance with its check status",
    ),
    op(
        "post",
        "/v1/leave",
        "Leave the cluster gracefully; the agent exits",
    ),
    op(
        "get",
        "/v1/audit",
        "Admins: the audit log of changes made through the API",
    ),
    public("get", "/metrics", "Prometheus metrics"),
    public("get", "/status", "The public status page (HTML)"),
    public("get", "/status.json", "The public status page's data"),
    public("get", "/v1/openapi.json", "This description"),
    op(
        "get",
        "/v1/state",
        "Leader, term, voters, learners, applied indexes",
    ),
    op(
        "get",
        "/v1/desired",
        "The whole desired state (hashes hidden)",
    ),
    op("get", "/v1/records", "Static DNS records"),
    op(
        "put",
        "/v1/records",
        "Create or replace a record set, with compare-and-set",
    ),
    op("delete", "/v1/records/{name}/{kind}", "Remove a record set"),
    op("get", "/v1/cluster-services", "Cluster-wide services"),
    op(
        "put",
        "/v1/cluster-services",
        "Declare a cluster-wide service",
    ),
    op(
        "delete",
        "/v1/cluster-services/{name}",
        "Remove a cluster-wide service",
    ),
    op(
        "get",
        "/v1/events",
        "Recent cluster-wide events and their deliveries",
    ),
    op(
        "post",
        "/v1/nodes/{name}/drain",
        "Put a node in maintenance",
    ),
    op(
        "post",
        "/v1/nodes/{name}/undrain",
        "Take a node out of maintenance",
    ),
    op("get", "/v1/notices", "Status-page notices"),
    op("put", "/v1/notices", "Post or update a notice"),
    op("delete", "/v1/notices/{id}", "Remove a notice"),
    op("get", "/v1/images", "Base images"),
    op(
        "put",
        "/v1/images",
        "Declare a base image whose files are uploaded",
    ),
    op("delete", "/v1/images/{name}", "Remove an image no VM uses"),
    op(
        "put",
        "/v1/blobs/{sha256}",
        "Upload an image file (raw body), kept if the hash matches",
    ),
    op("get", "/v1/pools", "IP pools"),
    op("put", "/v1/pools", "Create or change an IP pool"),
    op(
        "delete",
        "/v1/pools/{name}",
        "Remove a pool none of whose addresses is in use",
    ),
    op("get", "/v1/vms", "VMs (a member's own only)"),
    op("post", "/v1/vms", "Create a VM"),
    op("get", "/v1/vms/{vm}", "One VM by id or name"),
    op("delete", "/v1/vms/{vm}", "Delete a VM and its disk"),
    op("post", "/v1/vms/{vm}/start", "Ask for the VM to run"),
    op("post", "/v1/vms/{vm}/stop", "Ask for the VM to shut down"),
    op("post", "/v1/vms/{vm}/reboot", "Ask for the VM to reboot"),
    op("put", "/v1/vms/{vm}/io", "Change the VM's IO limits"),
    op(
        "get",
        "/v1/vms/{vm}/console",
        "Part of the VM's serial console log",
    ),
    op("get", "/v1/hosts", "Worker hosts with capacity"),
    op(
        "post",
        "/v1/nodes/{name}/fence",
        "Confirm a dead worker is off",
    ),
    op("post", "/v1/nodes/{name}/unfence", "Take back a fence"),
    op(
        "get",
        "/v1/drift",
        "Drift entries with their proposed fixes",
    ),
    op(
        "post",
        "/v1/drift/{host}/{kind}/{vm}/fix",
        "Apply a drift entry's fix",
    ),
    op("get", "/v1/accounts", "Admins: accounts"),
    op("post", "/v1/accounts", "Admins: create an account"),
    op("delete", "/v1/accounts/{name}", "Admins: remove an account"),
    op("get", "/v1/tokens", "API tokens (a member's own)"),
    op(
        "post",
        "/v1/tokens",
        "Create a token; its secret is answered once",
    ),
    op("delete", "/v1/tokens/{id}", "Revoke a token"),
    op("get", "/v1/me", "The caller's account"),
    op(
        "put",
        "/v1/me/ssh-keys/{name}",
        "Add or replace one of the caller's SSH keys",
    ),
    op(
        "delete",
        "/v1/me/ssh-keys/{name}",
        "Remove one of the caller's SSH keys",
    ),
    op("post", "/v1/me/password", "Change the caller's password"),
    op(
        "post",
        "/v1/announce",
        "Admins: email every member who owns a VM, through this node's [smtp] server",
    ),
];

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for endpoint in ENDPOINTS {
        let params: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "summary": endpoint.summary,
            "parameters": params,
            "responses": {
                "200": {"description": "done; JSON body"},
                "400": {"description": "a bad body or parameter; the message names the field"},
                "401": {"description": "no token, or a wrong one"},
                "403": {"description": "not allowed to this caller"},
                "404": {"description": "no such object (or another member's)"},
                "503": {"description": "no quorum; the message says why"}
            }
        });
        if !endpoint.token {
            operation["security"] = json!([]);
        }
        paths
            .entry(endpoint.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(endpoint.method.to_owned(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hearth agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every agent serves this API on its api_addr. Writes go through Raft; reads are local unless ?consistent."
        },
        "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) of every `.route("PATH", get(..).post(..))` in a source file.
    fn routes_in(source: &str) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for chunk in source.split(".route(").skip(1) {
            let chunk = chunk.trim_start();
            let Some(rest) = chunk.strip_prefix('"') else {
                continue;
            };
            let Some(end) = rest.find('"') else { continue };
            let path = &rest[..end];
            // The method chain runs to the end of the call: count parentheses.
            let mut depth = 1;
            let mut call = String::new();
            for c in rest[end + 1..].chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                call.push(c);
            }
            for method in ["get", "post", "put", "delete"] {
                let called = call.match_indices(method).any(|(i, _)| {
                    let before = call[..i].chars().last();
                    let after = call[i + method.len()..].chars().next();
                    matches!(before, Some(',' | '.' | ' ' | '\n')) && after == Some('(')
                });
                if called {
                    found.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
        found
    }

    #[test]
    fn the_description_matches_the_route_tables() {
        let mut routed = BTreeSet::new();
        for source in [
            include_str!("api.rs"),
            include_str!("state_api.rs"),
            include_str!("compute_api.rs"),
            include_str!("accounts_api.rs"),
        ] {
            routed.extend(routes_in(source));
        }
        assert!(routed.len() > 40, "the parser found too little: {routed:?}");
        let described: BTreeSet<(String, String)> = ENDPOINTS
            .iter()
            .map(|e| (e.method.to_owned(), e.path.to_owned()))
            .collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let stale: Vec<_> = described.difference(&routed).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "routes not in openapi.rs: {missing:?}; described but not routed: {stale:?}"
        );
        let doc = document();
        assert_eq!(
            doc["paths"]["/v1/vms/{vm}"]["get"]["parameters"][0]["name"],
            "vm"
        );
        assert_eq!(doc["paths"]["/status"]["get"]["security"], json!([]));
    }
}
