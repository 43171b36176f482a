//! CLI commands of the replicated desired state: `state`, `records`, cluster-wide
//! `services add|rm|list`, and `node drain|undrain`.

use clap::{Args, Subcommand};
use hearth_types::api::{Expect, PutNotice, PutRecords, PutService};
use hearth_types::desired::{ClusterService, RecordData, RecordSet, Versioned};
use hearth_types::notice::{Notice, NoticeKind};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum RecordsCommand {
    /// List the static DNS records.
    List {
        /// Read through the leader (linearizable) instead of this node's copy.
        #[arg(long)]
        consistent: bool,
    },
    /// Add a value to the record set NAME TYPE (creating it): e.g. `mail A 192.0.2.7`,
    /// `@ MX 10 mail.example.org.`, `_imap._tcp SRV 0 5 993 mail.example.org.`,
    /// `www2 CNAME www.example.org.`, `@ TXT "v=spf1 -all"`.
    Add {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The value; MX and SRV take several words.
        #[arg(required = true, num_args = 1..)]
        value: Vec<String>,
        /// TTL of the set in seconds (default: the zone's TTL).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Remove the record set NAME TYPE, or only one VALUE of it.
    Rm {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        value: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ServicesCommand {
    /// List the cluster-wide service declarations.
    List,
    /// Declare (or replace) a cluster-wide service.
    Add(ServiceArgs),
    /// Remove a cluster-wide service.
    Rm { name: String },
}

#[derive(Args)]
pub struct ServiceArgs {
    name: String,
    /// Nodes that run it (repeat); none means every node.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Check: an http:// URL that must answer 2xx.
    #[arg(long, conflicts_with_all = ["tcp", "exec"])]
    http: Option<String>,
    /// Check: an IP:port that must accept a TCP connection.
    #[arg(long, conflicts_with = "exec")]
    tcp: Option<String>,
    /// Check: a command (run through /bin/sh -c) that must exit 0.
    #[arg(long)]
    exec: Option<String>,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 2)]
    rise: u32,
    #[arg(long, default_value_t = 2)]
    fall: u32,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Put NAME in maintenance: its instances leave DNS.
    Drain { name: String },
    /// Take NAME out of maintenance.
    Undrain { name: String },
    /// Confirm that the worker NAME is powered off for good.
    ///
    /// Its VMs that never had a disk are placed elsewhere; the others stay `lost` (their
    /// disks are on NAME) until NAME comes back or an admin gives a disk up with `hearth vm
    /// recreate VM --empty-disk`. Refused while gossip sees NAME alive or suspect.
    Fence {
        name: String,
        /// Fence even though gossip sees NAME up. If it is not really off, its VMs may run
        /// twice; the answer names them.
        #[arg(long)]
        force: bool,
    },
    /// Take back a fence.
    Unfence { name: String },
    /// Drain the worker NAME and move every VM off it, one at a time (cold, for now: each
    /// VM is shut down, its disk copied, and started on the roomiest other worker).
    ///
    /// Refused when the other workers cannot hold all of NAME's VMs (the N+1 check that
    /// `hearth hosts` shows for every host). Stops at the first move given up, leaving the
    /// VMs not moved yet where they are. Waits, printing each move's progress, until NAME
    /// holds no VM (or --no-wait). NAME stays drained: `hearth node undrain NAME` after the
    /// maintenance.
    Evacuate {
        name: String,
        /// Return once the evacuation is asked for.
        #[arg(long)]
        no_wait: bool,
        /// Stop an evacuation: the move under way finishes, no other starts.
        #[arg(long, conflicts_with = "no_wait")]
        stop: bool,
    },
}

pub fn state(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let status: serde_json::Value = client.get("/v1/state")?;
    if json {
        print_json(&status);
        return Ok(());
    }
    let text = |key: &str| status[key].as_str().unwrap_or("-").to_owned();
    let list = |key: &str| {
        status[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!("node:     {} ({})", text("node"), text("role"));
    println!("leader:   {}", text("leader"));
    println!("term:     {}", status["term"]);
    println!("voters:   {}", list("voters"));
    println!("learners: {}", list("learners"));
    println!("applied:  {}", status["applied_index"]);
    if let Some(snapshot) = status["snapshot_index"].as_u64() {
        let purged = status["purged_index"].as_u64().unwrap_or(0);
        println!("snapshot: {snapshot} (log kept after {purged})");
    }
    if let Some(nodes) = status["nodes"].as_object() {
        let rows = nodes.iter().map(|(node, report)| {
            let field = |key: &str| match &report[key] {
                Value::Null => "-".to_owned(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            vec![
                node.clone(),
                field("role"),
                field("term"),
                field("applied_index"),
                field("error"),
            ]
        });
        println!();
        print_table(&["NODE", "ROLE", "TERM", "APPLIED", "ERROR"], rows);
    }
    Ok(())
}

type Records = BTreeMap<String, Versioned<RecordSet>>;

pub fn records(client: &ApiClient, json: bool, command: RecordsCommand) -> Result<(), ClientError> {
    match command {
        RecordsCommand::List { consistent } => {
            let path = if consistent {
                "/v1/records?consistent"
            } else {
                "/v1/records"
            };
            let sets: Records = client.get(path)?;
            if json {
                print_json(&sets);
                return Ok(());
            }
            let rows = sets.values().flat_map(|set| {
                set.value.values.iter().map(move |value| {
                    vec![
                        set.value.name.clone(),
                        value.type_name().to_owned(),
                        RecordData::value_text(value),
                        set.value.ttl.map_or("-".into(), |t| t.to_string()),
                        set.version.to_string(),
                    ]
                })
            });
            print_table(&["NAME", "TYPE", "VALUE", "TTL", "VERSION"], rows);
            Ok(())
        }
        RecordsCommand::Add {
            name,
            kind,
            value,
            ttl,
        } => {
            let data = hearth_types::record_text::parse_value(&kind, &value)
                .map_err(ClientError::Usage)?;
            update_set(client, json, &name, &kind, |set| {
                if let Some(ttl) = ttl {
                    set.ttl = Some(ttl);
                }
                if !set.values.contains(&data) {
                    set.values.push(data.clone());
                }
            })
        }
        RecordsCommand::Rm { name, kind, value } if value.is_empty() => {
            let answer: serde_json::Value =
                client.delete(&format!("/v1/records/{name}/{}", kind.to_ascii_uppercase()))?;
            report(json, &answer, &format!("removed {name} {kind}"));
            Ok(())
        }
        RecordsCommand::Rm { name, kind, value } => {
            let data = hearth_types::record_text::parse_value(&kind, &value)
                .map_err(ClientError::Usage)?;
            update_set(client, json, &name, &kind, |set| {
                set.values.retain(|v| *v != data)
            })
        }
    }
}

/// Reads the set, changes it, and writes it back with compare-and-set, retrying when another
/// write got in between.
fn update_set(
    client: &ApiClient,
    json: bool,
    name: &str,
    kind: &str,
    change: impl Fn(&mut RecordSet),
) -> Result<(), ClientError> {
    let key = hearth_types::desired::record_key(name, kind);
    for _ in 0..5 {
        let sets: Records = client.get("/v1/records?consistent")?;
        let (mut set, expect) = match sets.get(&key) {
            Some(current) => (current.value.clone(), Expect::Version(current.version)),
            None => (
                RecordSet {
                    name: name.to_owned(),
                    ttl: None,
                    values: vec![],
                },
                Expect::Absent,
            ),
        };
        change(&mut set);
        let result = if set.values.is_empty() {
            let version = match expect {
                Expect::Version(version) => version,
                _ => 0,
            };
            client.delete::<serde_json::Value>(&format!(
                "/v1/records/{name}/{}?version={version}",
                kind.to_ascii_uppercase()
            ))
        } else {
            let body = PutRecords {
                records: set.clone(),
                expect,
            };
            client.put::<serde_json::Value>("/v1/records", &body)
        };
        match result {
            Ok(answer) => {
                report(
                    json,
                    &answer,
                    &format!("{name} {kind}: {} value(s)", set.values.len()),
                );
                return Ok(());
            }
            Err(ClientError::Status { status: 409, .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(ClientError::Usage(format!(
        "{name} {kind} keeps changing under us; try again"
    )))
}

pub fn services(
    client: &ApiClient,
    json: bool,
    command: ServicesCommand,
) -> Result<(), ClientError> {
    match command {
        ServicesCommand::List => {
            let services: BTreeMap<String, Versioned<ClusterService>> =
                client.get("/v1/cluster-services")?;
            if json {
                print_json(&services);
                return Ok(());
            }
            let rows = services.values().map(|s| {
                let nodes = if s.value.nodes.is_empty() {
                    "(all)".to_owned()
                } else {
                    s.value.nodes.join(",")
                };
                let check = s.value.check.as_ref().map_or("-".to_owned(), |c| {
                    c.http
                        .clone()
                        .or(c.tcp.clone())
                        .or(c.exec.as_ref().map(|e| e.join(" ")))
                        .unwrap_or_default()
                });
                vec![s.value.name.clone(), nodes, check, s.version.to_string()]
            });
            print_table(&["SERVICE", "NODES", "CHECK", "VERSION"], rows);
            Ok(())
        }
        ServicesCommand::Add(args) => {
            let check =
                (args.http.is_some() || args.tcp.is_some() || args.exec.is_some()).then(|| {
                    hearth_types::desired::CheckSpec {
                        http: args.http.clone(),
                        tcp: args.tcp.clone(),
                        exec: args
                            .exec
                            .clone()
                            .map(|e| vec!["/bin/sh".into(), "-c".into(), e]),
                        interval_ms: args.interval_ms,
                        timeout_ms: args.timeout_ms,
                        rise: args.rise,
                        fall: args.fall,
                    }
                });
            let service = ClusterService {
                name: args.name.clone(),
                nodes: args.nodes,
                check,
            };
            let answer: serde_json::Value = client.put(
                "/v1/cluster-services",
                &PutService {
                    service,
                    expect: Expect::Any,
                },
            )?;
            report(json, &answer, &format!("service {} declared", args.name));
            Ok(())
        }
        ServicesCommand::Rm { name } => {
            let answer: serde_json::Value =
                client.delete(&format!("/v1/cluster-services/{name}"))?;
            report(json, &answer, &format!("service {name} removed"));
            Ok(())
        }
    }
}

pub fn node(client: &ApiClient, json: bool, command: NodeCommand) -> Result<(), ClientError> {
    if let NodeCommand::Evacuate {
        name,
        no_wait,
        stop,
    } = &command
    {
        return crate::compute_cli::evacuate(client, json, name, *no_wait, *stop);
    }
    let (name, verb, query) = match &command {
        NodeCommand::Evacuate { .. } => unreachable!("handled above"),
        NodeCommand::Drain { name } => (name, "drain", ""),
        NodeCommand::Undrain { name } => (name, "undrain", ""),
        NodeCommand::Fence { name, force } => {
            (name, "fence", if *force { "?force=true" } else { "" })
        }
        NodeCommand::Unfence { name } => (name, "unfence", ""),
    };
    let answer: serde_json::Value = client.post(&format!("/v1/nodes/{name}/{verb}{query}"))?;
    if let Some(warning) = answer["warning"].as_str() {
        eprintln!("hearth: warning: {warning}");
    }
    report(json, &answer, &format!("{name}: {verb}ed"));
    Ok(())
}

/// `hearth events`: recent cluster-wide events and their delivery state.
pub fn events(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let events: Vec<hearth_types::desired::EventRecord> = client.get("/v1/events")?;
    if json {
        print_json(&events);
        return Ok(());
    }
    let rows = events.iter().map(|record| {
        let deliveries: Vec<String> = record
            .deliveries
            .iter()
            .map(|(name, d)| match (d.delivered, &d.last_error) {
                (true, _) => format!("{name}: delivered"),
                (false, Some(error)) => format!("{name}: failed x{} ({error})", d.attempts),
                (false, None) => format!("{name}: pending"),
            })
            .collect();
        vec![
            record.id.to_string(),
            crate::output::time_ms(record.at_ms),
            record.event.kind.to_string(),
            record.event.member.name.clone(),
            match record.event.subject() {
                s if s.is_empty() => "-".into(),
                s => s,
            },
            if deliveries.is_empty() {
                "-".into()
            } else {
                deliveries.join("; ")
            },
        ]
    });
    print_table(
        &["ID", "TIME (UTC)", "EVENT", "MEMBER", "ABOUT", "DELIVERY"],
        rows,
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum NoticeCommand {
    /// Post (or update) a notice on every node's public status page.
    Post {
        /// A short id: lowercase letters, digits and inner hyphens (e.g. `db-outage`).
        id: String,
        /// `incident` or `maintenance`.
        #[arg(long, default_value = "incident", value_parser = ["incident", "maintenance"])]
        kind: String,
        /// One line for the page's heading.
        #[arg(long)]
        title: String,
        /// More words: what happens, what users should do, when it is expected to end.
        #[arg(long, default_value = "")]
        body: String,
    },
    /// Mark a notice resolved (it stays on the page among the recent ones).
    Resolve { id: String },
    /// List the notices.
    List,
    /// Remove a notice from the page.
    Rm { id: String },
}

type Notices = BTreeMap<String, Versioned<hearth_types::notice::Notice>>;

/// The request that posts a new notice (the API node sets its time).
fn new_notice(id: String, kind: &str, title: String, body: String) -> PutNotice {
    let kind = match kind {
        "maintenance" => NoticeKind::Maintenance,
        _ => NoticeKind::Incident,
    };
    PutNotice {
        notice: Notice {
            id,
            kind,
            title,
            body,
            posted_at: 0,
            resolved_at: None,
        },
        expect: Expect::Any,
    }
}

/// The request that marks `current` resolved now, if it has not changed since it was read.
fn resolved(current: &Versioned<Notice>) -> PutNotice {
    let mut notice = current.value.clone();
    notice.resolved_at = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .max(notice.posted_at),
    );
    PutNotice {
        notice,
        expect: Expect::Version(current.version),
    }
}

pub fn notice(client: &ApiClient, json: bool, command: NoticeCommand) -> Result<(), ClientError> {
    let done = |answer: &Value, text: String| {
        if json {
            print_json(answer);
        } else {
            println!("{text}");
        }
    };
    match command {
        NoticeCommand::Post {
            id,
            kind,
            title,
            body,
        } => {
            let body = new_notice(id.clone(), &kind, title, body);
            let answer: Value = client.put("/v1/notices", &body)?;
            done(
                &answer,
                format!("{id}: posted on the status page (/status)"),
            );
        }
        NoticeCommand::Resolve { id } => {
            let notices: Notices = client.get("/v1/notices")?;
            let Some(current) = notices.get(&id) else {
                return Err(ClientError::Usage(format!(
                    "ID: no notice `{id}`; `hearth notice list` shows them"
                )));
            };
            let answer: Value = client.put("/v1/notices", &resolved(current))?;
            done(&answer, format!("{id}: resolved"));
        }
        NoticeCommand::List => {
            let notices: Notices = client.get("/v1/notices")?;
            if json {
                print_json(&notices);
                return Ok(());
            }
            let rows = notices.values().map(|n| {
                vec![
                    n.value.id.clone(),
                    n.value.kind.as_str().to_owned(),
                    if n.value.resolved_at.is_some() {
                        "resolved".into()
                    } else {
                        "open".into()
                    },
                    n.value.title.clone(),
                ]
            });
            print_table(&["ID", "KIND", "STATE", "TITLE"], rows);
        }
        NoticeCommand::Rm { id } => {
            let answer: Value = client.delete(&format!("/v1/notices/{id}"))?;
            done(&answer, format!("{id}: removed"));
        }
    }
    Ok(())
}
