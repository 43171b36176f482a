//! The panel's pages as pure functions from the JSON API's answers, read into the same typed
//! rows the CLI reads (`hearth_types::api`), to HTML. Every text from the API is escaped;
//! every form posts a CSRF token; nothing needs JavaScript.

use std::collections::BTreeMap;

use hearth_types::account::AuditEntry;
use hearth_types::api::{AccountRow, ConsoleText, HostRow, PoolRow, VmRow, VmStats};
use hearth_types::compute::{Drift, DriftKind, Image, Phase, ReplicaState};
use hearth_types::desired::{ClusterService, DesiredState, EventRecord, RecordSet, Versioned};
use hearth_types::notice::Notice;
use hearth_types::vmstats::Bucket;
use hearth_types::{CheckStatus, MemberRow, MemberState, ServiceRow};

use super::html::{escape, page, utc};
use super::session::Flash;
use super::svg;

/// VM sizes offered by the create form: (name, vCPUs, MiB, GiB).
pub const SIZES: [(&str, u32, u64, u64); 4] = [
    ("tiny", 1, 256, 2),
    ("small", 1, 1024, 10),
    ("medium", 2, 2048, 20),
    ("large", 4, 4096, 40),
];

/// Who is looking, for the navigation and the forms.
pub struct Chrome<'a> {
    pub user: &'a str,
    pub admin: bool,
    pub csrf: &'a str,
    /// The path of the current section, to mark it in the navigation.
    pub active: &'a str,
    pub flash: Option<&'a Flash>,
}

/// A page with the navigation, the flash message and `body`.
pub fn frame(chrome: &Chrome, title: &str, body: &str) -> String {
    frame_with(chrome, title, "", body)
}

/// [`frame`] with more in the page's head.
pub fn frame_with(chrome: &Chrome, title: &str, head: &str, body: &str) -> String {
    let mut links = vec![
        ("/panel", "My VMs"),
        ("/panel/zones", "Domains"),
        ("/panel/billing", "Billing"),
        ("/panel/account", "Account"),
    ];
    if chrome.admin {
        links.extend([
            ("/admin", "Nodes"),
            ("/admin/members", "Members"),
            ("/admin/services", "Services & DNS"),
            ("/admin/vms", "All VMs"),
            ("/admin/drift", "Drift"),
            ("/admin/events", "Events"),
            ("/admin/audit", "Audit"),
            ("/admin/billing", "All billing"),
            ("/admin/announce", "Announce"),
        ]);
    }
    let mut nav = String::from("<nav>");
    for (href, label) in links {
        let class = if href == chrome.active {
            " class=\"on\""
        } else {
            ""
        };
        nav.push_str(&format!("<a href=\"{href}\"{class}>{label}</a>"));
    }
    nav.push_str(&format!(
        "<span class=\"who\">{}</span>{}</nav>\n",
        escape(chrome.user),
        post_button("/logout", "Log out", chrome.csrf, "")
    ));
    let flash = chrome.flash.map_or(String::new(), |flash| {
        format!(
            "<p class=\"flash{}\" role=\"status\" id=\"flash\">{}</p>\n",
            if flash.ok { "" } else { " error" },
            escape(&flash.text)
        )
    });
    crate::web::html::page_with(title, head, &format!("{nav}{flash}{body}"))
}

/// A form of one button that POSTs to `action`.
pub fn post_button(action: &str, label: &str, csrf: &str, class: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button class=\"{class}\">{}</button></form>",
        escape(action),
        escape(csrf),
        escape(label)
    )
}

pub fn hidden_csrf(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

/// The login form. `csrf` is the double-submit value also set as a cookie.
pub fn login(csrf: &str, name: &str, problem: Option<&str>) -> String {
    let problem = problem.map_or(String::new(), |p| {
        format!(
            "<p class=\"flash error\" role=\"alert\" id=\"flash\">{}</p>",
            escape(p)
        )
    });
    page(
        "Log in · hearth",
        &format!(
            "<h1>Log in</h1>{problem}\
<form class=\"stack\" method=\"post\" action=\"/login\">{}\
<label for=\"name\">Account</label><input id=\"name\" name=\"name\" autocomplete=\"username\" required value=\"{}\">\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<p><button id=\"login\">Log in</button></p></form>\
<p class=\"muted\"><a href=\"/reset\" id=\"forgot\">Forgot your password?</a> · <a href=\"/signup\" id=\"signup-link\">Sign up</a> · <a href=\"/status\">Status page</a></p>",
            hidden_csrf(csrf),
            escape(name)
        ),
    )
}

/// A page that only says what went wrong.
pub fn problem(chrome: &Chrome, title: &str, message: &str) -> String {
    frame(
        chrome,
        title,
        &format!(
            "<h1>{}</h1><p class=\"flash error\" role=\"alert\">{}</p>",
            escape(title),
            escape(message)
        ),
    )
}

fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "ok",
        Phase::Failed | Phase::Lost | Phase::Crashed => "bad",
        _ => "warn",
    }
}

fn ips(row: &VmRow) -> String {
    row.vm
        .ips
        .iter()
        .map(|ip| escape(&ip.address.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn size(row: &VmRow) -> String {
    let request = &row.vm.request;
    format!(
        "{} vCPU · {} MiB · {} GiB",
        request.vcpus, request.memory_mib, request.disk_gib
    )
}

fn host(row: &VmRow) -> &str {
    row.vm.host.as_deref().unwrap_or_default()
}

/// VM rows: name (linked), owner if `owners`, state, IPs, size, host if `hosts`.
fn vm_table(vms: &[VmRow], owners: bool, hosts: bool) -> String {
    let mut out = String::from("<div class=\"scroll\"><table id=\"vms\"><tr><th>name</th>");
    if owners {
        out.push_str("<th>owner</th>");
    }
    out.push_str("<th>state</th><th>addresses</th><th>size</th>");
    if hosts {
        out.push_str("<th>host</th>");
    }
    out.push_str("</tr>\n");
    for vm in vms {
        let request = &vm.vm.request;
        let phase = vm.shown_phase;
        out.push_str(&format!(
            "<tr id=\"vm-{name}\"><td><a href=\"/panel/vms/{id}\">{name}</a></td>",
            id = escape(&vm.vm.id),
            name = escape(&request.name),
        ));
        if owners {
            out.push_str(&format!("<td>{}</td>", escape(&request.owner)));
        }
        // A second copy that fell behind shows beside the phase.
        let degraded = vm
            .vm
            .replica
            .as_ref()
            .is_some_and(|r| r.state == ReplicaState::Degraded);
        out.push_str(&format!(
            "<td class=\"{} phase\">{}{}</td><td>{}</td><td>{}</td>",
            if degraded { "bad" } else { phase_class(phase) },
            phase.as_str(),
            if degraded { " · copy degraded" } else { "" },
            ips(vm),
            size(vm)
        ));
        if hosts {
            out.push_str(&format!("<td>{}</td>", escape(host(vm))));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div>\n");
    out
}

/// `/panel`: the caller's VMs and the create form.
pub fn member_home(
    chrome: &Chrome,
    vms: &[VmRow],
    images: &BTreeMap<String, Versioned<Image>>,
    pools: &[PoolRow],
    me: &AccountRow,
) -> String {
    let mut body = String::from("<h1>Your VMs</h1>\n");
    if vms.is_empty() {
        body.push_str("<p class=\"muted\">You have no VMs yet.</p>\n");
    } else {
        body.push_str(&vm_table(vms, false, false));
    }
    body.push_str("<h2>Create a VM</h2>\n");
    let images: Vec<&String> = images.keys().collect();
    if images.is_empty() {
        body.push_str("<p class=\"muted\">No images are declared yet; an admin adds them with <code>hearth image add</code>.</p>\n");
        return frame(chrome, "Your VMs · hearth", &body);
    }
    let options = |values: &[&String]| -> String {
        values
            .iter()
            .map(|v| format!("<option>{}</option>", escape(v)))
            .collect()
    };
    let sizes: String = SIZES
        .iter()
        .enumerate()
        .map(|(i, (name, cpus, mib, gib))| {
            format!(
                "<option value=\"{name}\"{}>{name}: {cpus} vCPU, {mib} MiB, {gib} GiB</option>",
                if i == 0 { " selected" } else { "" }
            )
        })
        .collect();
    let keys: Vec<&String> = me.ssh_keys.keys().collect();
    let key_options = format!(
        "<option value=\"\">all my keys ({})</option>{}",
        keys.len(),
        options(&keys)
    );
    let pools: Vec<&String> = pools.iter().map(|p| &p.pool.name).collect();
    let pool_options = format!("{}<option value=\"\">no address</option>", options(&pools));
    body.push_str(&format!(
        "<form class=\"stack\" method=\"post\" action=\"/panel/vms\" id=\"create\">{}\
<label for=\"vm-name\">Name</label><input id=\"vm-name\" name=\"name\" required pattern=\"[a-z0-9]([a-z0-9-]*[a-z0-9])?\" maxlength=\"63\" placeholder=\"web1\">\
<label for=\"image\">Image</label><select id=\"image\" name=\"image\">{}</select>\
<label for=\"size\">Size</label><select id=\"size\" name=\"size\">{sizes}</select>\
<label for=\"key\">SSH key</label><select id=\"key\" name=\"key\">{key_options}</select>\
<label for=\"pool\">Address from</label><select id=\"pool\" name=\"pool\">{pool_options}</select>\
<p><button id=\"create-vm\">Create</button></p></form>\n",
        hidden_csrf(chrome.csrf),
        options(&images),
    ));
    if keys.is_empty() {
        body.push_str("<p class=\"muted\">You have no SSH keys yet: <a href=\"/panel/account\">add one</a> to log in to your VMs.</p>\n");
    }
    frame(chrome, "Your VMs · hearth", &body)
}

/// The second copy of a VM that asks for two: where, and whether it is in sync.
fn replica_row(vm: &VmRow) -> String {
    if vm.vm.request.replicas < 2 {
        return String::new();
    }
    let (class, text) = match &vm.vm.replica {
        Some(r) => {
            let class = match r.state {
                ReplicaState::InSync => "ok",
                ReplicaState::Degraded => "bad",
                _ => "warn",
            };
            (class, format!("on {}, {}", r.host, r.summary()))
        }
        None => ("warn", "none yet".to_owned()),
    };
    format!(
        "<dl><dt>second copy</dt><dd class=\"{class}\" id=\"replica\">{}</dd></dl>\n",
        escape(&text)
    )
}

/// `/panel/vms/ID/terminal`: the VM's serial console in xterm.js, attached over the
/// WebSocket at `/panel/vms/ID/terminal/ws` (see `assets/terminal.js`).
pub fn terminal_page(chrome: &Chrome, vm: &VmRow) -> String {
    let id = &vm.vm.id;
    let name = &vm.vm.request.name;
    let head = "<link rel=\"stylesheet\" href=\"/assets/xterm.css\">\
<script src=\"/assets/xterm.js\" defer></script><script src=\"/assets/terminal.js\" defer></script>";
    let body = format!(
        "<h1>{} · terminal</h1>\n<p class=\"muted\">The VM's serial console, as if at its keyboard: \
one person types at a time, the others watch. <a href=\"/panel/vms/{id}\">Back to the VM</a></p>\n\
<p id=\"terminal-status\" role=\"status\" data-state=\"connecting\">Connecting…</p>\n\
<div id=\"terminal\" data-socket=\"/panel/vms/{id}/terminal/ws\"></div>\n\
<noscript><p>The terminal needs JavaScript; <code>hearth vm console {} --interactive</code> works without it.</p></noscript>\n\
<p class=\"muted\">xterm.js is MIT-licensed: <a href=\"/assets/xterm-LICENSE.txt\">its licence</a>.</p>\n",
        escape(name),
        escape(name),
    );
    frame_with(chrome, &format!("{name} · terminal · hearth"), head, &body)
}

/// `/panel/vms/ID`: one VM, its buttons and the end of its console.
pub fn vm_page(
    chrome: &Chrome,
    vm: &VmRow,
    load: &Load<'_>,
    console: Result<&ConsoleText, String>,
) -> String {
    let request = &vm.vm.request;
    let id = &vm.vm.id;
    let name = &request.name;
    let phase = vm.shown_phase;
    let message = vm.vm.message.as_deref().unwrap_or_default();
    let mut body = format!(
        "<h1>{}</h1>\n<dl><dt>state</dt><dd class=\"{} phase\" id=\"phase\">{}{}</dd>\
<dt>addresses</dt><dd id=\"ips\">{}</dd><dt>size</dt><dd>{}</dd><dt>image</dt><dd>{}</dd>\
<dt>power</dt><dd>{}</dd><dt>owner</dt><dd>{}</dd><dt>host</dt><dd>{}</dd><dt>id</dt><dd>{}</dd></dl>\n",
        escape(name),
        phase_class(phase),
        phase.as_str(),
        if message.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"muted\">({})</span>", escape(message))
        },
        {
            let ips = ips(vm);
            if ips.is_empty() {
                "none".to_owned()
            } else {
                ips
            }
        },
        size(vm),
        escape(&request.image),
        request.power.as_str(),
        escape(&request.owner),
        escape(host(vm)),
        escape(id),
    );
    body.push_str(&replica_row(vm));
    let base = format!("/panel/vms/{id}");
    body.push_str("<p>");
    for (action, label) in [("start", "Start"), ("stop", "Stop"), ("reboot", "Reboot")] {
        body.push_str(&post_button(
            &format!("{base}/{action}"),
            label,
            chrome.csrf,
            "",
        ));
        body.push(' ');
    }
    body.push_str(&format!(
        "</p><details><summary>Delete…</summary><p>Deleting removes the VM and its disk for good.</p>{}</details>\n",
        post_button(
            &format!("{base}/delete"),
            &format!("Delete {name} for good"),
            chrome.csrf,
            "danger"
        )
    ));
    body.push_str(&format!(
        "<p><a href=\"{base}/backups\" id=\"backups\">Backups and restore</a></p>\n"
    ));
    body.push_str(&load_section(&base, load));
    body.push_str(&format!(
        "<h2>Console</h2><p class=\"muted\">The end of the serial console. <a href=\"{base}\">Refresh</a> · <a href=\"{base}/terminal\" id=\"open-terminal\">Open the terminal</a></p>\n"
    ));
    match console {
        Ok(console) => body.push_str(&format!(
            "<pre id=\"console\">{}</pre>\n",
            escape(&console.text)
        )),
        Err(why) => body.push_str(&format!("<p class=\"muted\">{}</p>\n", escape(&why))),
    }
    frame(chrome, &format!("{name} · hearth"), &body)
}

/// Which span a VM's charts cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Day,
    Week,
}

/// A VM's recent load as its page draws it: the host's figures (or why there are none), the
/// span asked for, and the time now (Unix milliseconds).
#[derive(Debug)]
pub struct Load<'a> {
    pub stats: Result<&'a VmStats, String>,
    pub range: Range,
    pub now_ms: u64,
}

/// `1.5 MiB/s` for bytes per second.
pub fn per_second(bytes: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match value {
        v if v >= 10.0 || unit == 0 => format!("{v:.0} {}", units[unit]),
        v => format!("{v:.1} {}", units[unit]),
    }
}

/// A VM's load per time slot: CPU in percent of its vCPUs, bytes per second read, written,
/// received and sent; `None` where nothing was recorded.
struct Figures {
    cpu: Vec<Option<f64>>,
    read: Vec<Option<f64>>,
    written: Vec<Option<f64>>,
    rx: Vec<Option<f64>>,
    tx: Vec<Option<f64>>,
}

impl Figures {
    fn of(slots: &[Option<Bucket>], vcpus: u32) -> Figures {
        let rate = |f: &dyn Fn(&Bucket) -> Option<f64>| -> Vec<Option<f64>> {
            slots
                .iter()
                .map(|slot| slot.filter(|b| b.covered_ms > 0).and_then(|b| f(&b)))
                .collect()
        };
        let vcpus = f64::from(vcpus.max(1));
        let per_s = |bytes: u64, b: &Bucket| bytes as f64 * 1000.0 / b.covered_ms as f64;
        Figures {
            cpu: rate(&|b| Some(b.cpu_ms as f64 * 100.0 / b.covered_ms as f64 / vcpus)),
            read: rate(&|b| Some(per_s(b.read_bytes, b))),
            written: rate(&|b| Some(per_s(b.written_bytes, b))),
            rx: rate(&|b| b.net.map(|n| per_s(n.rx_bytes, b))),
            tx: rate(&|b| b.net.map(|n| per_s(n.tx_bytes, b))),
        }
    }
}

/// The VM's CPU, disk and network over the last day or week, as line charts.
fn load_section(base: &str, load: &Load<'_>) -> String {
    let (span, other, other_label, from) = match load.range {
        Range::Day => (
            "the last day, in 5-minute averages",
            "?range=week",
            "last week",
            "a day ago",
        ),
        Range::Week => (
            "the last week, in 30-minute averages",
            "",
            "last day",
            "a week ago",
        ),
    };
    let mut out = format!(
        "<h2>Load</h2><p class=\"muted\">Over {span}. <a href=\"{base}{other}\" id=\"range\">Show the {other_label}</a></p>\n"
    );
    let stats = match &load.stats {
        Ok(stats) => stats,
        Err(why) => {
            out.push_str(&format!("<p class=\"muted\">{}</p>\n", escape(why)));
            return out;
        }
    };
    let series = match load.range {
        Range::Day => &stats.day,
        Range::Week => &stats.week,
    };
    let figures = Figures::of(&series.slots(load.now_ms), stats.vcpus);
    out.push_str(&load_charts(&figures, stats.vcpus, span, from));
    out
}

/// The three charts of a VM's load.
fn load_charts(figures: &Figures, vcpus: u32, span: &str, from: &str) -> String {
    let Figures {
        cpu,
        read,
        written,
        rx,
        tx,
    } = figures;
    let mut out = String::new();
    let peak = |lines: &[&Vec<Option<f64>>]| {
        lines
            .iter()
            .flat_map(|l| l.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b))
    };
    let line = |name: &str, color, values: &Vec<Option<f64>>| svg::Line {
        name: name.into(),
        color,
        values: values.clone(),
    };
    let axis = (from, "now");
    out.push_str(&format!(
        "<h3>CPU</h3>{}\n",
        svg::chart(
            "chart-cpu",
            &format!("CPU use over {span}, in percent of its {vcpus} vCPU"),
            &[line("CPU", svg::GOOD, cpu)],
            100.0,
            |v| format!("{v:.0} %"),
            axis,
        )
    ));
    let disk_top = svg::nice_max(peak(&[read, written]), 1024.0);
    out.push_str(&format!(
        "<h3>Disk</h3>{}\n",
        svg::chart(
            "chart-disk",
            &format!("disk bytes per second over {span}"),
            &[
                line("read", "#2f6db5", read),
                line("written", svg::POOR, written)
            ],
            disk_top,
            per_second,
            axis,
        )
    ));
    out.push_str("<h3>Network</h3>");
    if rx.iter().chain(tx).all(Option::is_none) {
        out.push_str("<p class=\"muted\" id=\"chart-net\">No figures: on QEMU's user-mode network the host cannot count a VM's bytes (a bridged VM's tap can).</p>\n");
    } else {
        let net_top = svg::nice_max(peak(&[rx, tx]), 1024.0);
        out.push_str(&svg::chart(
            "chart-net",
            &format!("network bytes per second over {span}"),
            &[line("received", "#2f6db5", rx), line("sent", svg::POOR, tx)],
            net_top,
            per_second,
            axis,
        ));
        out.push('\n');
    }
    out
}

/// `/panel/account`: SSH keys and the password.
pub fn account_page(chrome: &Chrome, me: &AccountRow) -> String {
    let mut body = format!(
        "<h1>Account {}</h1>\n<p class=\"muted\">{} · {}</p>\n<h2>SSH keys</h2>\n",
        escape(&me.name),
        me.role.as_str(),
        escape(&me.email)
    );
    let keys = &me.ssh_keys;
    match keys {
        keys if !keys.is_empty() => {
            body.push_str("<div class=\"scroll\"><table id=\"keys\"><tr><th>name</th><th>key</th><th></th></tr>\n");
            for (name, key) in keys {
                let short: String = key.chars().take(40).collect();
                body.push_str(&format!(
                    "<tr id=\"key-{n}\"><td>{n}</td><td><code>{}…</code></td><td>{}</td></tr>\n",
                    escape(&short),
                    post_button(
                        &format!("/panel/account/keys/{name}/delete"),
                        "Remove",
                        chrome.csrf,
                        "danger"
                    ),
                    n = escape(name),
                ));
            }
            body.push_str("</table></div>\n");
        }
        _ => body.push_str("<p class=\"muted\">No keys yet.</p>\n"),
    }
    body.push_str(&format!(
        "<form class=\"stack\" method=\"post\" action=\"/panel/account/keys\" id=\"add-key\">{}\
<label for=\"key-name\">Key name</label><input id=\"key-name\" name=\"name\" required placeholder=\"laptop\">\
<label for=\"key-text\">Public key</label><textarea id=\"key-text\" name=\"key\" rows=\"3\" required placeholder=\"ssh-ed25519 AAAA… you@laptop\"></textarea>\
<p><button id=\"add-key-button\">Add key</button></p></form>\n\
<h2>Password</h2><form class=\"stack\" method=\"post\" action=\"/panel/account/password\">{}\
<label for=\"current\">Current password</label><input id=\"current\" name=\"current\" type=\"password\" autocomplete=\"current-password\" required>\
<label for=\"new\">New password</label><input id=\"new\" name=\"new\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{}\">\
<p><button>Change password</button></p></form>\n",
        hidden_csrf(chrome.csrf),
        hidden_csrf(chrome.csrf),
        crate::auth::MIN_PASSWORD,
    ));
    frame(chrome, "Account · hearth", &body)
}

fn state_class(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "ok",
        MemberState::Suspect => "warn",
        _ => "bad",
    }
}

/// `/admin`: nodes with their state, roles, capacity and the drain and fence buttons.
pub fn nodes_page(
    chrome: &Chrome,
    members: &[MemberRow],
    hosts: &[HostRow],
    desired: &DesiredState,
) -> String {
    let hosts: BTreeMap<&str, &HostRow> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    let mut body = String::from(
        "<h1>Nodes</h1>\n<div class=\"scroll\"><table id=\"nodes\"><tr><th>node</th><th>state</th><th>roles</th>\
<th>capacity</th><th>VMs</th><th>actions</th></tr>\n",
    );
    for member in members {
        let name = &member.name;
        let state = member.state;
        let roles: Vec<&str> = member.roles.iter().map(|r| r.as_str()).collect();
        let drained = desired.is_drained(name);
        let host = hosts.get(name.as_str());
        let capacity = host.map_or(String::from("–"), |h| {
            let c = &h.capacity;
            format!(
                "{} vCPU · {} MiB · {} GiB",
                c.vcpus, c.memory_mib, c.disk_gib
            )
        });
        let fenced = host.is_some_and(|h| h.fenced);
        let mut flags = String::new();
        if drained {
            flags.push_str(" <span class=\"warn\">drained</span>");
        }
        if fenced {
            flags.push_str(" <span class=\"bad\">fenced</span>");
        }
        let base = format!("/admin/nodes/{name}");
        let mut actions = if drained {
            post_button(&format!("{base}/undrain"), "Undrain", chrome.csrf, "")
        } else {
            post_button(&format!("{base}/drain"), "Drain", chrome.csrf, "")
        };
        // Fencing says the host is off: offered only for a dead host (a live one would run
        // its VMs twice; a left one is usually an agent restarting).
        if host.is_some() && fenced {
            actions.push(' ');
            actions.push_str(&post_button(
                &format!("{base}/unfence"),
                "Unfence",
                chrome.csrf,
                "",
            ));
        } else if host.is_some() && state == MemberState::Dead {
            actions.push(' ');
            actions.push_str(&post_button(
                &format!("{base}/fence"),
                "Fence",
                chrome.csrf,
                "danger",
            ));
        }
        body.push_str(&format!(
            "<tr id=\"node-{n}\"><td>{n}<br><span class=\"muted\">{}</span></td><td class=\"{}\">{}{flags}</td>\
<td>{}</td><td>{capacity}</td><td>{}</td><td>{actions}</td></tr>\n",
            member.address,
            state_class(state),
            state.as_str(),
            escape(&roles.join(", ")),
            host.map_or(String::from("–"), |h| h.vms.to_string()),
            n = escape(name),
        ));
    }
    body.push_str("</table></div>\n<p class=\"muted\">Drain takes a node out of DNS answers; fence confirms a dead worker is off for good: its VMs that never had a disk are placed elsewhere, the others stay lost until it is back or an admin recreates them on an empty disk.</p>\n");
    body.push_str(&capacity_section(&hosts));
    frame(chrome, "Nodes · hearth", &body)
}

/// The workers' capacity as meters: what the VMs placed on each ask for against what it
/// offers, and the whole cluster's first.
fn capacity_section(hosts: &BTreeMap<&str, &HostRow>) -> String {
    if hosts.is_empty() {
        return String::new();
    }
    let meters =
        |placed: &hearth_types::quota::Usage, vcpus: u64, memory_mib: u64, disk_gib: u64| {
            let meter = |label: &str, used: u64, offered: u64, unit: &str| svg::Meter {
                label: label.into(),
                used,
                offered,
                text: format!("{used} of {offered} {unit}").trim_end().to_owned(),
            };
            [
                meter("vCPU", placed.vcpus, vcpus, ""),
                meter("memory", placed.memory_mib, memory_mib, "MiB"),
                meter("disk", placed.disk_gib, disk_gib, "GiB"),
            ]
        };
    let mut total = hearth_types::quota::Usage::default();
    let (mut vcpus, mut memory, mut disk) = (0, 0, 0);
    let mut each = String::new();
    for (name, host) in hosts {
        let c = &host.capacity;
        let p = &host.placed;
        (total.vms, total.vcpus) = (total.vms + p.vms, total.vcpus + p.vcpus);
        (total.memory_mib, total.disk_gib) =
            (total.memory_mib + p.memory_mib, total.disk_gib + p.disk_gib);
        (vcpus, memory, disk) = (
            vcpus + u64::from(c.vcpus),
            memory + c.memory_mib,
            disk + c.disk_gib,
        );
        each.push_str(&format!(
            "<div><strong>{n}</strong> <span class=\"muted\">{} VM(s){}</span>{}</div>\n",
            p.vms,
            if host.fenced { ", fenced" } else { "" },
            svg::meters(
                &format!("capacity-{name}"),
                &format!("{name}: placed against offered"),
                &meters(p, u64::from(c.vcpus), c.memory_mib, c.disk_gib)
            ),
            n = escape(name),
        ));
    }
    format!(
        "<h2>Capacity</h2>\n<p class=\"muted\">What the VMs placed on each worker ask for, against what it offers: amber from 80 %, red when over.</p>\n\
<div class=\"hosts\"><div><strong>all workers</strong> <span class=\"muted\">{} VM(s)</span>{}</div>\n{each}</div>\n",
        total.vms,
        svg::meters(
            "capacity",
            "the cluster: placed against offered",
            &meters(&total, vcpus, memory, disk)
        ),
    )
}

/// `/admin/members`: accounts, their VMs, the create form.
pub fn members_page(chrome: &Chrome, accounts: &[AccountRow], vms: &[VmRow]) -> String {
    let mut body = String::from(
        "<h1>Members</h1>\n<div class=\"scroll\"><table id=\"accounts\"><tr><th>name</th><th>role</th><th>email</th><th>keys</th><th>VMs</th><th></th></tr>\n",
    );
    for account in accounts {
        let name = &account.name;
        let owned = vms.iter().filter(|vm| vm.vm.request.owner == *name).count();
        let keys = account.ssh_keys.len();
        let status = match (account.unverified, account.awaiting_approval) {
            (true, _) => " <span class=\"warn\">(email not confirmed)</span>".to_owned(),
            (false, true) => format!(
                " <span class=\"warn\">(awaiting approval)</span> {}",
                post_button(
                    &format!("/admin/members/{name}/approve"),
                    "Approve",
                    chrome.csrf,
                    ""
                )
            ),
            (false, false) => String::new(),
        };
        body.push_str(&format!(
            "<tr id=\"account-{n}\"><td>{n}{status}</td><td>{}</td><td>{}</td><td>{keys}</td><td>{owned}</td><td>{}</td></tr>\n",
            account.role.as_str(),
            escape(&account.email),
            if name == chrome.user {
                String::new()
            } else {
                post_button(
                    &format!("/admin/members/{name}/delete"),
                    "Remove",
                    chrome.csrf,
                    "danger",
                )
            },
            n = escape(name),
        ));
    }
    body.push_str(&format!(
        "</table></div>\n<h2>New account</h2>\
<form class=\"stack\" method=\"post\" action=\"/admin/members\" id=\"new-account\">{}\
<label for=\"account-name\">Name</label><input id=\"account-name\" name=\"name\" required pattern=\"[a-z0-9]([a-z0-9-]*[a-z0-9])?\">\
<label for=\"role\">Role</label><select id=\"role\" name=\"role\"><option value=\"member\">member</option><option value=\"admin\">admin</option></select>\
<label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\">\
<label for=\"account-password\">Password</label><input id=\"account-password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{}\">\
<p><button id=\"create-account\">Create account</button></p></form>\n",
        hidden_csrf(chrome.csrf),
        crate::auth::MIN_PASSWORD
    ));
    frame(chrome, "Members · hearth", &body)
}

/// `/admin/services`: every instance's health, the cluster-wide services, the static records.
pub fn services_page(
    chrome: &Chrome,
    services: &[ServiceRow],
    cluster_services: &BTreeMap<String, Versioned<ClusterService>>,
    records: &BTreeMap<String, Versioned<RecordSet>>,
) -> String {
    let mut body = String::from("<h1>Services</h1>\n");
    if services.is_empty() {
        body.push_str("<p class=\"muted\">No service instances.</p>\n");
    } else {
        body.push_str("<div class=\"scroll\"><table id=\"services\"><tr><th>service</th><th>node</th><th>address</th><th>check</th><th>node state</th></tr>\n");
        for row in services {
            let status = row.status;
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td></tr>\n",
                escape(&row.service),
                escape(&row.node),
                row.address,
                if status == CheckStatus::Passing { "ok" } else { "bad" },
                status.as_str(),
                state_class(row.node_state),
                row.node_state.as_str(),
            ));
        }
        body.push_str("</table></div>\n");
    }
    if !cluster_services.is_empty() {
        body.push_str("<h2>Cluster-wide services</h2><ul>\n");
        for (name, service) in cluster_services {
            body.push_str(&format!(
                "<li>{} <span class=\"muted\">version {}</span></li>\n",
                escape(name),
                service.version
            ));
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<h2>DNS records</h2>\n");
    match Some(records).filter(|m| !m.is_empty()) {
        None => body.push_str("<p class=\"muted\">No static records; service and node names answer by themselves.</p>\n"),
        Some(records) => {
            body.push_str("<div class=\"scroll\"><table id=\"records\"><tr><th>name</th><th>type</th><th>values</th><th>TTL</th></tr>\n");
            for (key, set) in records {
                let (name, kind) = key.split_once('/').unwrap_or((key, ""));
                let values: Vec<String> =
                    set.value.values.iter().map(|v| v.value_text()).collect();
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    escape(name),
                    escape(kind),
                    escape(&values.join(", ")),
                    set.value.ttl.map(|t| t.to_string()).unwrap_or_default()
                ));
            }
            body.push_str("</table></div>\n");
        }
    }
    frame(chrome, "Services & DNS · hearth", &body)
}

/// `/admin/vms`: every member's VMs.
pub fn all_vms_page(chrome: &Chrome, vms: &[VmRow]) -> String {
    let body = if vms.is_empty() {
        "<h1>All VMs</h1><p class=\"muted\">No VMs.</p>".to_owned()
    } else {
        format!("<h1>All VMs</h1>\n{}", vm_table(vms, true, true))
    };
    frame(chrome, "All VMs · hearth", &body)
}

/// `/admin/drift`: what hosts found and will not fix alone, each with its fix button.
pub fn drift_page(chrome: &Chrome, drift: &[Drift]) -> String {
    let mut body = String::from("<h1>Drift</h1>\n");
    if drift.is_empty() {
        body.push_str(
            "<p class=\"ok\" id=\"no-drift\">No drift: every host runs what it should.</p>\n",
        );
    } else {
        body.push_str("<div class=\"scroll\"><table id=\"drift\"><tr><th>host</th><th>VM</th><th>kind</th><th>found</th><th>the fix</th><th></th></tr>\n");
        for entry in drift {
            let id = &entry.id;
            // A missing disk has no one-click fix: its text says what an admin can do.
            let button = if entry.kind == DriftKind::MissingDisk {
                String::new()
            } else {
                post_button(&format!("/admin/drift/{id}/fix"), "Fix", chrome.csrf, "")
            };
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&entry.host),
                escape(&entry.vm),
                entry.kind.as_str(),
                escape(&entry.detail),
                escape(&entry.fix),
                button,
            ));
        }
        body.push_str("</table></div>\n");
    }
    frame(chrome, "Drift · hearth", &body)
}

/// `/admin/events`: cluster events, newest first.
pub fn events_page(chrome: &Chrome, events: &[EventRecord]) -> String {
    let mut body = String::from("<h1>Events</h1>\n");
    if events.is_empty() {
        body.push_str("<p class=\"muted\">No events recorded.</p>\n");
    } else {
        body.push_str("<div class=\"scroll\"><table id=\"events\"><tr><th>when</th><th>event</th><th>node</th><th>about</th><th>handlers</th></tr>\n");
        for record in events {
            let event = &record.event;
            let at = record.at_ms / 1000;
            let deliveries: Vec<String> = record
                .deliveries
                .iter()
                .map(|(name, delivery)| {
                    let state = if delivery.delivered {
                        "delivered".to_owned()
                    } else if let Some(error) = &delivery.last_error {
                        format!("failing after {} attempts: {error}", delivery.attempts)
                    } else {
                        "pending".to_owned()
                    };
                    format!("{name}: {state}")
                })
                .collect();
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                utc(at),
                event.kind.as_str(),
                escape(&event.member.name),
                escape(&event.subject()),
                escape(&deliveries.join(", ")),
            ));
        }
        body.push_str("</table></div>\n");
    }
    frame(chrome, "Events · hearth", &body)
}

/// `/admin/audit`: who changed what, newest first.
pub fn audit_page(chrome: &Chrome, audit: &[AuditEntry]) -> String {
    let mut body = String::from("<h1>Audit log</h1>\n");
    if audit.is_empty() {
        body.push_str("<p class=\"muted\">No changes recorded.</p>\n");
    } else {
        body.push_str("<div class=\"scroll\"><table id=\"audit\"><tr><th>when</th><th>who</th><th>change</th><th>status</th><th>node</th></tr>\n");
        for entry in audit.iter().rev() {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td><code>{} {}</code></td><td>{}</td><td>{}</td></tr>\n",
                utc(entry.at),
                escape(&entry.who),
                escape(&entry.method),
                escape(&entry.path),
                entry.status,
                escape(&entry.node),
            ));
        }
        body.push_str("</table></div>\n");
    }
    frame(chrome, "Audit · hearth", &body)
}

/// `/admin/announce`: the announcement email and the status page's notices.
pub fn announce_page(chrome: &Chrome, notices: &BTreeMap<String, Versioned<Notice>>) -> String {
    let mut body = format!(
        "<h1>Announce</h1>\n<h2>Email every member who owns a VM</h2>\
<form class=\"stack\" method=\"post\" action=\"/admin/announce\" id=\"announce\">{}\
<label for=\"subject\">Subject</label><input id=\"subject\" name=\"subject\" required maxlength=\"200\">\
<label for=\"message\">Message</label><textarea id=\"message\" name=\"body\" rows=\"8\" required></textarea>\
<p><button id=\"send\">Send</button></p></form>\n\
<h2>Status page notices</h2>\n",
        hidden_csrf(chrome.csrf)
    );
    match Some(notices).filter(|n| !n.is_empty()) {
        None => body.push_str("<p class=\"muted\">No notices.</p>\n"),
        Some(notices) => {
            body.push_str("<div class=\"scroll\"><table id=\"notices\"><tr><th>notice</th><th>kind</th><th>state</th><th></th></tr>\n");
            for (id, notice) in notices {
                let value = &notice.value;
                let resolved = value.resolved_at;
                let mut actions = String::new();
                if resolved.is_none() {
                    actions.push_str(&post_button(
                        &format!("/admin/notices/{id}/resolve"),
                        "Resolve",
                        chrome.csrf,
                        "",
                    ));
                    actions.push(' ');
                }
                actions.push_str(&post_button(
                    &format!("/admin/notices/{id}/delete"),
                    "Remove",
                    chrome.csrf,
                    "danger",
                ));
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>\n",
                    escape(&value.title),
                    value.kind.as_str(),
                    resolved.map_or("ongoing".to_owned(), |at| format!("resolved {}", utc(at))),
                ));
            }
            body.push_str("</table></div>\n");
        }
    }
    body.push_str(&format!(
        "<form class=\"stack\" method=\"post\" action=\"/admin/notices\" id=\"post-notice\">{}\
<label for=\"notice-id\">Short name</label><input id=\"notice-id\" name=\"id\" required pattern=\"[a-z0-9]([a-z0-9-]*[a-z0-9])?\" placeholder=\"disk-swap\">\
<label for=\"kind\">Kind</label><select id=\"kind\" name=\"kind\"><option value=\"incident\">incident</option><option value=\"maintenance\">maintenance</option></select>\
<label for=\"title\">Title</label><input id=\"title\" name=\"title\" required maxlength=\"200\">\
<label for=\"notice-body\">Details</label><textarea id=\"notice-body\" name=\"body\" rows=\"3\"></textarea>\
<p><button>Post to the status page</button></p></form>\n",
        hidden_csrf(chrome.csrf)
    ));
    frame(chrome, "Announce · hearth", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A row as the API would send it.
    fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("a valid API document")
    }

    fn chrome(admin: bool) -> Chrome<'static> {
        Chrome {
            user: "alice",
            admin,
            csrf: "CSRF",
            active: "/panel",
            flash: None,
        }
    }

    #[test]
    fn text_from_the_api_is_escaped_everywhere() {
        let vm: VmRow = typed(json!({
            "version": 3, "id": "vm-1", "phase": "running", "shown_phase": "running",
            "name": "<script>x</script>", "owner": "alice", "vcpus": 1,
            "memory_mib": 256, "disk_gib": 2, "image": "tiny", "power": "running",
            "ips": [{"address": "192.0.2.10", "pool": "lan", "prefix": 24}],
            "host": "w1",
        }));
        let console: ConsoleText = typed(json!({"vm": "vm-1", "host": "w1", "offset": 0,
            "next": 17, "total": 17, "text": "</pre><b>boot</b>"}));
        let stats: VmStats = typed(json!({"vm": "vm-1", "host": "w1", "vcpus": 2,
            "day": {"width_ms": 300_000, "len": 288, "buckets": [
                {"start_ms": 0, "covered_ms": 300_000, "cpu_ms": 300_000, "read_bytes": 0,
                 "written_bytes": 3_072_000, "net": null}]},
            "week": {"width_ms": 1_800_000, "len": 336, "buckets": []}}));
        let load = Load {
            stats: Ok(&stats),
            range: Range::Day,
            now_ms: 60_000,
        };
        let html = vm_page(&chrome(false), &vm, &load, Ok(&console));
        // The one bucket, the last slot: half of 2 vCPUs, 10 KiB/s written; no network.
        assert!(html.contains("CPU: peak 50 %, latest 50 %"), "{html}");
        assert!(
            html.contains("written: peak 10 KiB/s, latest 10 KiB/s"),
            "{html}"
        );
        assert!(html.contains("read: peak 0 B/s"), "{html}");
        assert!(html.contains("id=\"chart-net\">No figures"), "{html}");
        assert!(
            html.contains("href=\"/panel/vms/vm-1?range=week\""),
            "{html}"
        );
        let week = vm_page(
            &chrome(false),
            &vm,
            &Load {
                range: Range::Week,
                ..load
            },
            Ok(&console),
        );
        assert!(week.contains("CPU: peak 0 %, latest none"), "{week}");
        assert!(week.contains("href=\"/panel/vms/vm-1\""), "{week}");
        assert!(!html.contains("<script>x"));
        assert!(html.contains("&lt;script&gt;x"));
        assert!(html.contains("&lt;/pre&gt;&lt;b&gt;boot"));
        assert!(html.contains("192.0.2.10"));
        // Every form carries the CSRF token.
        assert_eq!(
            html.matches("<form").count(),
            html.matches("name=\"csrf\" value=\"CSRF\"").count()
        );
    }

    #[test]
    fn admins_get_the_admin_navigation_and_members_do_not() {
        assert!(frame(&chrome(true), "t", "").contains("/admin/drift"));
        assert!(!frame(&chrome(false), "t", "").contains("/admin"));
    }

    #[test]
    fn the_create_form_offers_images_sizes_keys_and_pools() {
        let image = |name: &str| {
            json!({"version": 1, "value": {"name": name, "format": "qcow2", "arch": "x86_64",
                "disk": {"sha256": "00", "size_bytes": 1}}})
        };
        let html = member_home(
            &chrome(false),
            &[],
            &typed(json!({"tiny": image("tiny"), "debian": image("debian")})),
            &typed::<Vec<PoolRow>>(json!([{"version": 1, "used": [], "pool": {"name": "lan",
                "cidr": "192.0.2.0/24", "gateway": null, "resolvers": []}}])),
            &typed(json!({"name": "alice", "role": "member",
                "ssh_keys": {"laptop": "ssh-ed25519 AAAA"}})),
        );
        for part in [
            "<option>tiny</option>",
            "<option>debian</option>",
            "value=\"small\"",
            "<option>laptop</option>",
            "<option>lan</option>",
            "You have no VMs yet",
        ] {
            assert!(html.contains(part), "{part}");
        }
    }

    #[test]
    fn drift_rows_have_fix_buttons() {
        let drift: Vec<Drift> = typed(json!([{"id": "w1/unknown-vm/vm-9", "host": "w1",
            "vm": "vm-9", "kind": "unknown-vm", "detail": "QEMU pid 42", "fix": "kill it"}]));
        let html = drift_page(&chrome(true), &drift);
        assert!(html.contains("action=\"/admin/drift/w1/unknown-vm/vm-9/fix\""));
        assert!(drift_page(&chrome(true), &[]).contains("No drift"));
    }

    #[test]
    fn the_fence_button_is_offered_for_dead_hosts_only() {
        let member = |name: &str, state: &str, address: &str| {
            json!({"name": name, "state": state, "address": address,
                "gossip_addr": format!("{address}:7946"), "roles": ["worker"], "tags": {}})
        };
        let members: Vec<MemberRow> = typed(json!([
            member("w1", "alive", "192.0.2.1"),
            member("w2", "suspect", "192.0.2.2"),
            member("w3", "left", "192.0.2.3"),
            member("w4", "dead", "192.0.2.4"),
        ]));
        let hosts: Vec<HostRow> = ["w1", "w2", "w3", "w4"]
            .iter()
            .map(|n| {
                typed(json!({"name": n, "state": null, "fenced": false, "vms": 1,
                    "capacity": {"vcpus": 4, "memory_mib": 4096, "disk_gib": 40},
                    "placed": {"vms": 1, "vcpus": 2, "memory_mib": 4096, "disk_gib": 50, "addresses": 1}}))
            })
            .collect();
        let html = nodes_page(&chrome(true), &members, &hosts, &DesiredState::default());
        // Capacity: the whole cluster's meters, then each worker's.
        assert!(html.contains("<h2>Capacity</h2>"), "{html}");
        assert!(html.contains("id=\"capacity\""), "{html}");
        assert!(html.contains("<title>vCPU: 8 of 16</title>"), "{html}");
        assert!(
            html.contains("<title>disk: 200 of 160 GiB</title>"),
            "{html}"
        );
        assert!(html.contains("id=\"capacity-w4\""), "{html}");
        assert!(
            html.contains("<title>memory: 4096 of 4096 MiB</title>"),
            "{html}"
        );
        for host in ["w1", "w2", "w3"] {
            assert!(
                !html.contains(&format!("/admin/nodes/{host}/fence")),
                "{host}: {html}"
            );
        }
        assert!(html.contains("/admin/nodes/w4/fence"), "{html}");
    }

    #[test]
    fn a_missing_disk_has_no_fix_button() {
        let drift: Vec<Drift> = typed(json!([
            {"id": "w1/missing-disk/vm-1", "host": "w1", "vm": "vm-1", "kind": "missing-disk",
             "detail": "db1's disk is on w1, which is fenced", "fix": "hearth vm recreate db1 --empty-disk"},
            {"id": "w2/wrong-host/vm-2", "host": "w2", "vm": "vm-2", "kind": "wrong-host",
             "detail": "a stale copy", "fix": "archive it"},
        ]));
        let html = drift_page(&chrome(true), &drift);
        assert!(
            !html.contains("/admin/drift/w1/missing-disk/vm-1/fix"),
            "{html}"
        );
        assert!(html.contains("recreate db1 --empty-disk"), "{html}");
        assert!(
            html.contains("/admin/drift/w2/wrong-host/vm-2/fix"),
            "{html}"
        );
    }
}
