//! The OpenAPI 3.1 description of the HTTP API, served at `/v1/openapi.json` (no token). The
//! endpoint list is data; a test reads the route tables in the sources and fails when a route
//! is added, removed or changed without this list following. Request and answer schemas are
//! derived (schemars) from the very types the handlers deserialize and serialize, so they
//! cannot drift from the code.

use std::collections::BTreeMap;

use hearth_state::model::Outcome;
use hearth_types::account::AuditEntry;
use hearth_types::api::{
    AccountRow, Announcement, ConsoleText, CreatedToken, HostRow, Key, MigrateVm, NewAccount,
    NewPassword, NewToken, PoolRow, PutImage, PutNotice, PutPool, PutRecords, PutService, Recreate,
    SetIo, TokenRow, VmRow, VmStats,
};
use hearth_types::compute::{Drift, Image, VmRequest};
use hearth_types::desired::{ClusterService, EventRecord, RecordSet, Versioned};
use hearth_types::notice::Notice;
use hearth_types::{MemberRow, ServiceRow};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

/// Builds a type's schema (a `$ref` into `components/schemas` for named types).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a write answers: the log index that committed it and the outcome.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct WriteAnswer {
    index: u64,
    result: Outcome,
}

/// One operation: method, path (axum's `{param}` syntax, which is also OpenAPI's), summary,
/// whether it needs a token, and the schemas of its JSON body and answer when it has them.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub token: bool,
    pub body: Option<SchemaFn>,
    pub answer: Option<SchemaFn>,
    /// Answers 201 (it creates something) rather than 200.
    pub creates: bool,
}

impl Endpoint {
    const fn body(mut self, schema: SchemaFn) -> Endpoint {
        self.body = Some(schema);
        self
    }

    const fn answers(mut self, schema: SchemaFn) -> Endpoint {
        self.answer = Some(schema);
        self
    }

    const fn created(mut self) -> Endpoint {
        self.creates = true;
        self
    }
}

const fn op(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        token: true,
        body: None,
        answer: None,
        creates: false,
    }
}

const fn public(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        token: false,
        body: None,
        answer: None,
        creates: false,
    }
}

pub const ENDPOINTS: &[Endpoint] = &[
    op(
        "get",
        "/v1/members",
        "The cluster's members as this node sees them",
    )
    .answers(schema::<Vec<MemberRow>>),
    op(
        "get",
        "/v1/services",
        "Every service instance with its check status",
    )
    .answers(schema::<Vec<ServiceRow>>),
    op(
        "post",
        "/v1/leave",
        "Leave the cluster gracefully; the agent exits",
    ),
    op(
        "get",
        "/v1/audit",
        "Admins: the audit log of changes made and refused through the API, and logins (?who=NAME, ?format=jsonl)",
    )
    .answers(schema::<Vec<AuditEntry>>),
    public("get", "/metrics", "Prometheus metrics"),
    public("get", "/status", "The public status page (HTML)"),
    public("get", "/status.json", "The public status page's data")
        .answers(schema::<hearth_types::status::Status>),
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
    op("get", "/v1/records", "Static DNS records")
        .answers(schema::<BTreeMap<String, Versioned<RecordSet>>>),
    op(
        "put",
        "/v1/records",
        "Create or replace a record set, with compare-and-set",
    )
    .body(schema::<PutRecords>)
    .answers(schema::<WriteAnswer>),
    op("delete", "/v1/records/{name}/{kind}", "Remove a record set"),
    op("get", "/v1/cluster-services", "Cluster-wide services")
        .answers(schema::<BTreeMap<String, Versioned<ClusterService>>>),
    op(
        "put",
        "/v1/cluster-services",
        "Declare a cluster-wide service",
    )
    .body(schema::<PutService>)
    .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/cluster-services/{name}",
        "Remove a cluster-wide service",
    ),
    op(
        "get",
        "/v1/events",
        "Recent cluster-wide events and their deliveries",
    )
    .answers(schema::<Vec<EventRecord>>),
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
    op("get", "/v1/notices", "Status-page notices")
        .answers(schema::<BTreeMap<String, Versioned<Notice>>>),
    op("put", "/v1/notices", "Post or update a notice")
        .body(schema::<PutNotice>)
        .answers(schema::<WriteAnswer>),
    op("delete", "/v1/notices/{id}", "Remove a notice"),
    op("get", "/v1/images", "Base images").answers(schema::<BTreeMap<String, Versioned<Image>>>),
    op(
        "put",
        "/v1/images",
        "Declare a base image whose files are uploaded",
    )
    .body(schema::<PutImage>)
    .answers(schema::<WriteAnswer>),
    op("delete", "/v1/images/{name}", "Remove an image no VM uses"),
    op(
        "put",
        "/v1/blobs/{sha256}",
        "Upload an image file (raw body), kept if the hash matches (200 when already stored)",
    )
    .created(),
    op("get", "/v1/pools", "IP pools").answers(schema::<Vec<PoolRow>>),
    op("put", "/v1/pools", "Create or change an IP pool")
        .body(schema::<PutPool>)
        .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/pools/{name}",
        "Remove a pool none of whose addresses is in use",
    ),
    op("get", "/v1/plans", "Admins: members' plans (quotas)")
        .answers(schema::<Vec<hearth_types::api::PlanRow>>),
    op("put", "/v1/plans", "Admins: create or change a plan")
        .body(schema::<hearth_types::api::PutPlan>)
        .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/plans/{name}",
        "Admins: remove a plan; its members fall back to the default plan",
    ),
    op(
        "put",
        "/v1/accounts/{name}/plan",
        "Admins: put an account on a plan, with limits of its own",
    )
    .body(schema::<hearth_types::api::SetPlan>)
    .answers(schema::<WriteAnswer>),
    op(
        "get",
        "/v1/invoices",
        "Invoices (a member's own only): closed ones, and each member's open invoice of the month asked (`?month=YYYY-MM`, this one by default); `?member=NAME` for one member's",
    )
    .answers(schema::<Vec<hearth_types::invoice::Invoice>>),
    op(
        "get",
        "/v1/invoices/{month}/{member}",
        "A member's invoice of a month: closed and final, or open as it stands",
    )
    .answers(schema::<hearth_types::invoice::Invoice>),
    op(
        "post",
        "/v1/invoices/{month}/close",
        "Admins: close an ended month now (the leader does it `[billing] close_after` after the month ends)",
    )
    .answers(schema::<WriteAnswer>),
    op(
        "post",
        "/v1/invoices/{month}/{member}/redeliver",
        "Admins: send a closed invoice to the webhook again (its delivery starts over)",
    )
    .answers(schema::<WriteAnswer>),
    op(
        "get",
        "/v1/invoice-deliveries",
        "Admins: each closed invoice's delivery to `[billing] webhook_url`: attempts, last status or error, delivered",
    )
    .answers(schema::<Vec<hearth_types::api::DeliveryRow>>),
    op(
        "get",
        "/v1/usage",
        "Metered usage rows (a member's own only) of a month (`?month=YYYY-MM`, this one by default; `?member=NAME`)",
    )
    .answers(schema::<Vec<hearth_types::metering::UsageRow>>),
    op(
        "post",
        "/v1/credits",
        "Admins: give a member a credit on their next invoice",
    )
    .body(schema::<hearth_types::api::NewCredit>)
    .answers(schema::<WriteAnswer>),
    op("get", "/v1/vms", "VMs (a member's own only)").answers(schema::<Vec<VmRow>>),
    op(
        "post",
        "/v1/vms/{vm}/owner",
        "Admins: give a VM to another account, within its quota",
    )
    .body(schema::<hearth_types::api::SetOwner>)
    .answers(schema::<WriteAnswer>),
    op("post", "/v1/vms", "Create a VM")
        .body(schema::<VmRequest>)
        .answers(schema::<WriteAnswer>)
        .created(),
    op("get", "/v1/vms/{vm}", "One VM by id or name").answers(schema::<VmRow>),
    op("delete", "/v1/vms/{vm}", "Delete a VM and its disk"),
    op("post", "/v1/vms/{vm}/start", "Ask for the VM to run"),
    op("post", "/v1/vms/{vm}/stop", "Ask for the VM to shut down"),
    op("post", "/v1/vms/{vm}/reboot", "Ask for the VM to reboot"),
    op(
        "post",
        "/v1/vms/{vm}/recreate",
        "Admins: give up a lost disk and start the VM over on an empty one",
    )
    .body(schema::<Recreate>)
    .answers(schema::<WriteAnswer>),
    op(
        "post",
        "/v1/vms/{vm}/migrate",
        "Admins: move the VM and its disk to another host (cold: stopped, copied, started there)",
    )
    .body(schema::<MigrateVm>)
    .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/vms/{vm}/migration",
        "Admins: give a move up; the VM runs where it was",
    ),
    op("put", "/v1/vms/{vm}/io", "Change the VM's IO limits")
        .body(schema::<SetIo>)
        .answers(schema::<WriteAnswer>),
    op(
        "get",
        "/v1/vms/{vm}/console",
        "Part of the VM's serial console log",
    )
    .answers(schema::<ConsoleText>),
    op(
        "get",
        "/v1/vms/{vm}/console/attach",
        "Attach to the VM's serial console: a WebSocket carrying the guest's output (binary), who holds the keyboard and why it closed (JSON text), and keystrokes",
    ),
    op(
        "get",
        "/v1/vms/{vm}/stats",
        "The VM's recent load: CPU time and disk bytes per 5 minutes over a day, per 30 over a week",
    )
    .answers(schema::<VmStats>),
    op("get", "/v1/hosts", "Worker hosts with capacity").answers(schema::<Vec<HostRow>>),
    op(
        "post",
        "/v1/nodes/{name}/fence",
        "Confirm a dead worker is off (?force=true while gossip sees it up)",
    ),
    op("post", "/v1/nodes/{name}/unfence", "Take back a fence"),
    op(
        "post",
        "/v1/nodes/{name}/evacuate",
        "Drain a worker and move its VMs off, one at a time (refused when the others cannot hold them)",
    ),
    op(
        "delete",
        "/v1/nodes/{name}/evacuation",
        "Stop an evacuation after the move under way",
    ),
    op(
        "get",
        "/v1/drift",
        "Drift entries with their proposed fixes",
    )
    .answers(schema::<Vec<Drift>>),
    op(
        "post",
        "/v1/drift/{host}/{kind}/{vm}/fix",
        "Apply a drift entry's fix (?destroy=true removes a gone VM's files)",
    ),
    op("get", "/v1/accounts", "Admins: accounts").answers(schema::<Vec<AccountRow>>),
    op("post", "/v1/accounts", "Admins: create an account")
        .body(schema::<NewAccount>)
        .answers(schema::<WriteAnswer>),
    op("delete", "/v1/accounts/{name}", "Admins: remove an account"),
    op(
        "post",
        "/v1/accounts/{name}/approve",
        "Admins: let in a member who signed up and waits for approval",
    )
    .answers(schema::<WriteAnswer>),
    op(
        "get",
        "/v1/signup",
        "Admins: the sign-up setting and the accounts waiting",
    )
    .answers(schema::<hearth_types::api::SignupView>),
    op("put", "/v1/signup", "Admins: open or close the sign-up page")
        .body(schema::<hearth_types::signup::SignupSettings>)
        .answers(schema::<WriteAnswer>),
    op("get", "/v1/invites", "Admins: invite codes not expired yet")
        .answers(schema::<Vec<hearth_types::signup::Invite>>),
    op(
        "post",
        "/v1/invites",
        "Admins: make an invite code; it is answered once",
    )
    .body(schema::<hearth_types::api::NewInvite>)
    .answers(schema::<hearth_types::api::CreatedInvite>)
    .created(),
    op("delete", "/v1/invites/{id}", "Admins: withdraw an invite code"),
    op("get", "/v1/zones", "DNS zones of members (a member's own)")
        .answers(schema::<Vec<hearth_types::api::ZoneRow>>),
    op("post", "/v1/zones", "Claim a domain as a zone of one's own")
        .body(schema::<hearth_types::api::NewZone>)
        .answers(schema::<WriteAnswer>),
    op("get", "/v1/zones/{apex}", "One zone, its challenge and records")
        .answers(schema::<hearth_types::api::ZoneRow>),
    op("delete", "/v1/zones/{apex}", "Give a zone up"),
    op(
        "post",
        "/v1/zones/{apex}/verify",
        "Check the zone's TXT challenge (admins: ?approve=true) and answer for it",
    )
    .answers(schema::<WriteAnswer>),
    op("put", "/v1/zones/{apex}/records", "Put one record set of a zone")
        .body(schema::<hearth_types::desired::RecordSet>)
        .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/zones/{apex}/records/{name}/{rtype}",
        "Remove one record set of a zone",
    ),
    op(
        "put",
        "/v1/zones/{apex}/follows/{name}",
        "Make a name of the zone answer a VM's addresses",
    )
    .body(schema::<hearth_types::api::FollowVm>)
    .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/zones/{apex}/follows/{name}",
        "Stop a name following a VM",
    ),
    op("get", "/v1/backups", "VMs' backups (a member's own VMs')")
        .answers(schema::<Vec<hearth_types::api::BackupRow>>),
    op("get", "/v1/vms/{key}/backups", "One VM's backups and their snapshots")
        .answers(schema::<hearth_types::api::BackupRow>),
    op(
        "post",
        "/v1/vms/{key}/backups",
        "Back a VM up now (its owner or an admin; one run at a time)",
    )
    .body(schema::<hearth_types::api::NewBackup>)
    .answers(schema::<WriteAnswer>),
    op(
        "post",
        "/v1/vms/{key}/restore",
        "Restore a VM from one of its snapshots: it stops, its disk is replaced (the old one archived) and it runs again as before",
    )
    .body(schema::<hearth_types::api::RestoreBackup>)
    .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/vms/{key}/restore",
        "End a VM's restore before its disk is replaced (its owner or an admin): it keeps the disk it had and gets its power back; refused (409) once the restored disk is the VM's",
    )
    .answers(schema::<WriteAnswer>),
    op(
        "put",
        "/v1/vms/{key}/backup-schedule",
        "Admins: a VM's daily backup schedule and retention: its own, none (off), or its owner's plan's",
    )
    .body(schema::<hearth_types::backup::ScheduleChoice>)
    .answers(schema::<WriteAnswer>),
    op(
        "get",
        "/v1/state-backups",
        "Admins: the desired state's own backups into each target, for disaster recovery",
    )
    .answers(schema::<Vec<hearth_types::api::StateBackupRow>>),
    op(
        "post",
        "/v1/restore",
        "Admins: fill a new, empty cluster with a backup of the desired state (`hearth restore --from REPO`); each VM's disk is recovered from its newest backup. With `check`, only whether this cluster may take it (409 if it holds anything)",
    )
    .body(schema::<hearth_types::backup::StateRestore>)
    .answers(schema::<WriteAnswer>),
    op("get", "/v1/backup-targets", "Admins: the backup targets")
        .answers(schema::<Vec<hearth_types::desired::Versioned<hearth_types::backup::BackupTarget>>>),
    op("get", "/v1/backup-targets/{name}", "Admins: one backup target")
        .answers(schema::<hearth_types::desired::Versioned<hearth_types::backup::BackupTarget>>),
    op(
        "put",
        "/v1/backup-targets/{name}",
        "Admins: add or change a backup target (a restic repository)",
    )
    .body(schema::<hearth_types::api::PutBackupTarget>)
    .answers(schema::<WriteAnswer>),
    op("delete", "/v1/backup-targets/{name}", "Admins: remove a backup target"),
    op("get", "/v1/tokens", "API tokens (a member's own)").answers(schema::<Vec<TokenRow>>),
    op(
        "post",
        "/v1/tokens",
        "Create a token; its secret is answered once",
    )
    .body(schema::<NewToken>)
    .answers(schema::<CreatedToken>)
    .created(),
    op("delete", "/v1/tokens/{id}", "Revoke a token"),
    op("get", "/v1/me", "The caller's account").answers(schema::<AccountRow>),
    op(
        "put",
        "/v1/me/ssh-keys/{name}",
        "Add or replace one of the caller's SSH keys",
    )
    .body(schema::<Key>)
    .answers(schema::<WriteAnswer>),
    op(
        "delete",
        "/v1/me/ssh-keys/{name}",
        "Remove one of the caller's SSH keys",
    ),
    op("post", "/v1/me/password", "Change the caller's password")
        .body(schema::<NewPassword>)
        .answers(schema::<WriteAnswer>),
    op(
        "post",
        "/v1/announce",
        "Admins: email every member who owns a VM, through this node's [smtp] server",
    )
    .body(schema::<Announcement>)
    .answers(schema::<crate::mail::Report>),
];

/// The OpenAPI document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for endpoint in ENDPOINTS {
        let params: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": param_schema(endpoint.path, name)})
            })
            .collect();
        let mut operation = json!({
            "summary": endpoint.summary,
            "parameters": params,
            "responses": responses(endpoint),
        });
        if !endpoint.token {
            operation["security"] = json!([]);
        }
        if let Some(body) = endpoint.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut generator)}}
            });
        }
        if let Some(answer) = endpoint.answer {
            let ok = if endpoint.creates { "201" } else { "200" };
            operation["responses"][ok]["content"] =
                json!({"application/json": {"schema": answer(&mut generator)}});
        }
        if let Some((status, links)) = links(endpoint) {
            operation["responses"][status]["links"] = links;
        }
        paths
            .entry(endpoint.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(endpoint.method.to_owned(), operation);
    }
    let mut schemas = Value::Object(generator.take_definitions(true));
    ip_formats(&mut schemas);
    integer_bounds(&mut schemas);
    time_zones(&mut schemas);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hearth agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every agent serves this API on its api_addr. Writes go through Raft; reads are local unless ?consistent."
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"token": []}],
        "paths": paths,
    })
}

/// The schema of path parameter `name` of `path`: the pattern its handler checks, or any
/// string where a name that matches nothing is simply not found (404).
fn param_schema(path: &str, name: &str) -> Value {
    use hearth_types::names::{NAME_PATTERN, SHA256_PATTERN};
    match (path, name) {
        ("/v1/blobs/{sha256}", "sha256") => json!({"type": "string", "pattern": SHA256_PATTERN}),
        ("/v1/me/ssh-keys/{name}", "name") => json!({"type": "string", "pattern": NAME_PATTERN}),
        (path, "apex") if path.starts_with("/v1/zones/") => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9.-]{1,235}$"})
        }
        (path, "name") if path.starts_with("/v1/zones/") => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9_@-][A-Za-z0-9._-]{0,199}$"})
        }
        (path, "name") if path.starts_with("/v1/backup-targets/") => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9-]{1,63}$"})
        }
        (_, "rtype") => json!({"type": "string", "pattern": "^[A-Za-z]{1,10}$"}),
        (_, "month") => {
            json!({"type": "string", "pattern": hearth_types::invoice::MONTH_PATTERN})
        }
        _ => json!({"type": "string"}),
    }
}

/// The statuses an operation answers: its success, 400 for a bad body or parameter, 401 and
/// 403, 404 for what is not there (or another member's), 409 for a write the cluster's state
/// refuses now, and 503 without quorum.
fn responses(endpoint: &Endpoint) -> Value {
    let mut responses = json!({
        "400": {"description": "a bad body or parameter; the message names the field"},
        "401": {"description": "no token, or a wrong one"},
        "403": {"description": "not allowed to this caller"},
        "404": {"description": "no such object (or another member's), or one it names"},
        "503": {"description": "no quorum; the message says why"}
    });
    if endpoint.creates {
        responses["201"] = json!({"description": "created; JSON body"});
        if endpoint.path == "/v1/blobs/{sha256}" {
            responses["200"] = json!({"description": "already stored; JSON body"});
        }
    } else {
        responses["200"] = json!({"description": "done; JSON body"});
    }
    if endpoint.path.ends_with("/console/attach") {
        responses.as_object_mut().expect("an object").remove("200");
        responses["101"] = json!({"description": "switched to the WebSocket"});
        responses["409"] = json!({"description": "the VM is not placed on a host yet"});
        responses["426"] = json!({"description": "not a WebSocket upgrade request"});
    }
    if endpoint.method != "get" {
        responses["409"] = json!({"description": "refused by the cluster's state now: a version that changed (`expect`), an object that exists, a node still up, no [smtp]; the message says why"});
    }
    if !endpoint.token {
        for status in ["401", "403"] {
            responses.as_object_mut().expect("an object").remove(status);
        }
    }
    responses
}

/// Where a client finds the parameters of other operations in an answer: (method, path,
/// the status that carries them, the paths they feed (every method; a path ending in `/*`
/// feeds every path under it), and each parameter's JSON pointer in the answer).
type LinkSource = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const LINKS: &[LinkSource] = &[
    (
        "get",
        "/v1/vms",
        "200",
        &["/v1/vms/{vm}", "/v1/vms/{vm}/*"],
        &[("vm", "/0/id")],
    ),
    (
        "post",
        "/v1/vms",
        "201",
        &["/v1/vms/{vm}", "/v1/vms/{vm}/*"],
        &[("vm", "/result/id")],
    ),
    (
        "get",
        "/v1/accounts",
        "200",
        &["/v1/accounts/{name}", "/v1/accounts/{name}/plan"],
        &[("name", "/0/name")],
    ),
    (
        "get",
        "/v1/pools",
        "200",
        &["/v1/pools/{name}"],
        &[("name", "/0/pool/name")],
    ),
    (
        "get",
        "/v1/plans",
        "200",
        &["/v1/plans/{name}"],
        &[("name", "/0/plan/name")],
    ),
    (
        "get",
        "/v1/tokens",
        "200",
        &["/v1/tokens/{id}"],
        &[("id", "/0/id")],
    ),
    (
        "post",
        "/v1/tokens",
        "201",
        &["/v1/tokens/{id}"],
        &[("id", "/id")],
    ),
    (
        "get",
        "/v1/hosts",
        "200",
        &["/v1/nodes/{name}/*"],
        &[("name", "/0/name")],
    ),
    (
        "get",
        "/v1/drift",
        "200",
        &["/v1/drift/{host}/{kind}/{vm}/fix"],
        &[("host", "/0/host"), ("kind", "/0/kind"), ("vm", "/0/vm")],
    ),
];

/// The OpenAPI links of an operation's answer, with the status they belong to.
fn links(endpoint: &Endpoint) -> Option<(&'static str, Value)> {
    let (_, _, status, targets, params) = LINKS
        .iter()
        .find(|(method, path, ..)| *method == endpoint.method && *path == endpoint.path)?;
    let fed = |path: &str| {
        targets.iter().any(|t| match t.strip_suffix("/*") {
            Some(prefix) => path.starts_with(&format!("{prefix}/")),
            None => path == *t,
        })
    };
    let mut links = Map::new();
    for op in ENDPOINTS.iter().filter(|e| fed(e.path)) {
        let id = format!("{}{}", op.method, op.path.replace(['/', '{', '}'], "_"));
        let parameters: Map<String, Value> = params
            .iter()
            .filter(|(name, _)| op.path.contains(&format!("{{{name}}}")))
            .map(|(name, pointer)| {
                (
                    (*name).to_owned(),
                    json!(format!("$response.body#{pointer}")),
                )
            })
            .collect();
        links.insert(
            id,
            json!({
                "operationRef": format!("#/paths/{}/{}", op.path.replace('~', "~0").replace('/', "~1"), op.method),
                "parameters": parameters,
            }),
        );
    }
    Some((status, Value::Object(links)))
}

/// Lists the time zones this build knows (its bundled IANA database) as the only values of
/// a backup schedule's `time_zone`, which the types crate can only give a pattern for.
fn time_zones(schemas: &mut Value) {
    let mut zones: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.to_string())
        .filter(|name| crate::backup_schedule::time_zone(name).is_ok())
        .collect();
    zones.sort();
    if let Some(zone) = schemas.pointer_mut("/BackupPolicy/properties/time_zone")
        && let Some(map) = zone.as_object_mut()
    {
        map.remove("pattern");
        map.insert("enum".into(), json!(zones));
    }
}

/// Gives each integer the largest value its Rust type holds, where schemars leaves it out
/// (`uint64` says `minimum: 0` only), so that clients know a larger number is refused.
fn integer_bounds(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let max = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(json!(u8::MAX)),
                Some("uint16") => Some(json!(u16::MAX)),
                Some("uint32") => Some(json!(u32::MAX)),
                Some("uint64") => Some(json!(u64::MAX)),
                Some("int64") => Some(json!(i64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.entry("maximum").or_insert(max);
            }
            if map.get("format").and_then(Value::as_str) == Some("int64") {
                map.entry("minimum").or_insert(json!(i64::MIN));
            }
            map.values_mut().for_each(integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(integer_bounds),
        _ => {}
    }
}

/// schemars describes an `IpAddr` as a string of format `ip`, which JSON Schema does not
/// define: spelled as either of the two it does.
fn ip_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("ip") {
                map.remove("format");
                map.insert(
                    "anyOf".into(),
                    json!([{"format": "ipv4"}, {"format": "ipv6"}]),
                );
            }
            map.values_mut().for_each(ip_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(ip_formats),
        _ => {}
    }
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
            include_str!("mod.rs"),
            include_str!("members.rs"),
            include_str!("audit.rs"),
            include_str!("state.rs"),
            include_str!("records.rs"),
            include_str!("cluster_services.rs"),
            include_str!("notices.rs"),
            include_str!("nodes.rs"),
            include_str!("images.rs"),
            include_str!("pools.rs"),
            include_str!("plans.rs"),
            include_str!("billing.rs"),
            include_str!("vms.rs"),
            include_str!("hosts.rs"),
            include_str!("drift.rs"),
            include_str!("accounts.rs"),
            include_str!("signup.rs"),
            include_str!("zones.rs"),
            include_str!("backups.rs"),
            include_str!("tokens.rs"),
            include_str!("me.rs"),
            include_str!("announce.rs"),
            include_str!("../http.rs"),
            include_str!("../web/public.rs"),
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

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn bodies_and_answers_are_described_from_the_handlers_types() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        // Every reference resolves.
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for target in &found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{target} points outside components"));
            assert!(schemas.get(name).is_some(), "{target} does not resolve");
        }
        let create = &doc["paths"]["/v1/vms"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(create["$ref"], "#/components/schemas/VmRequest");
        let required = schemas["VmRequest"]["required"].to_string();
        for field in ["name", "owner", "vcpus", "memory_mib", "disk_gib", "image"] {
            assert!(required.contains(field), "{field} in {required}");
        }
        // A VM row is the request flattened into the VM, as serde writes it.
        let row = schemas["VmRow"]["properties"].as_object().unwrap();
        for field in ["id", "name", "owner", "ips", "shown_phase", "version"] {
            assert!(row.contains_key(field), "{field} in VmRow");
        }
        // The bodies refuse unknown fields, as the handlers do.
        assert_eq!(schemas["PutImage"]["additionalProperties"], false);
        assert!(doc["paths"]["/v1/announce"]["post"]["responses"]["200"]["content"].is_object());
    }
}
