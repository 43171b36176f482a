//! The panel's backup pages, as pure functions over the API's rows: a VM's backups (its
//! snapshots newest first, "Back up now", a restore under way or done) and the one
//! confirmation a restore asks for, naming the snapshot's time.

use hearth_types::api::BackupRow;
use hearth_types::backup::BackupSnapshot;

use super::escape;
use super::pages::{Chrome, frame, hidden_csrf, post_button};

/// A time in Unix milliseconds, as the pages write it (UTC, to the second).
fn time_of(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// What the page says above the list: a restore or a backup under way, the last error.
fn state_of(row: &BackupRow) -> String {
    let backups = &row.backups;
    let mut out = String::new();
    if let Some(run) = &backups.restore {
        out.push_str(&format!(
            "<p class=\"warn\" id=\"backup-state\">Restoring the snapshot of {} UTC: the VM is stopped until its disk is replaced.</p>\n",
            time_of(run.snapshot.time_ms)
        ));
    } else if backups.pending() {
        out.push_str(
            "<p class=\"warn\" id=\"backup-state\">A backup is under way; the VM runs on.</p>\n",
        );
    }
    if let Some(done) = &backups.restored {
        out.push_str(&format!(
            "<p class=\"ok\" id=\"restored\">Restored from the snapshot of {} UTC.</p>\n",
            time_of(done.snapshot_time_ms)
        ));
    }
    for (label, error) in [
        ("The last backup failed", &backups.last_error),
        (
            "The last restore was given up, and the VM kept its disk",
            &backups.restore_error,
        ),
    ] {
        if let Some(error) = error {
            out.push_str(&format!(
                "<p class=\"error\">{label}: {}</p>\n",
                escape(error)
            ));
        }
    }
    out
}

/// `/panel/vms/{id}/backups`.
pub fn backups_page(chrome: &Chrome, name: &str, row: &BackupRow) -> String {
    let base = format!("/panel/vms/{}/backups", row.vm);
    let busy = row.backups.restoring() || row.backups.pending();
    let mut body = format!(
        "<h1>Backups of {}</h1>\n<p class=\"muted\">A backup copies the disk as it is at that instant, while the VM runs, into the co-op's backup repository. Restoring one replaces the VM's disk with it; the disk it has now is kept aside on its server.</p>\n",
        escape(name)
    );
    body.push_str(&state_of(row));
    body.push_str(&schedule_of(row));
    if !busy {
        body.push_str(&format!(
            "<p>{}</p>\n",
            post_button(&base, "Back up now", chrome.csrf, "")
        ));
    }
    body.push_str("<table id=\"snapshots\"><thead><tr><th>Taken (UTC)</th><th>Size</th><th>Read</th><th>New</th><th>By</th><th></th></tr></thead><tbody>\n");
    for snapshot in row.backups.snapshots.iter().rev() {
        let restore = match busy {
            true => String::new(),
            false => format!(
                "<a class=\"button\" id=\"restore-{id}\" href=\"{base}/{id}/restore\">Restore…</a>",
                id = escape(&snapshot.id)
            ),
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{restore}</td></tr>\n",
            time_of(snapshot.time_ms),
            mib(snapshot.size_bytes),
            mib(snapshot.read_bytes),
            mib(snapshot.added_bytes),
            escape(snapshot.by.as_deref().unwrap_or("schedule")),
        ));
    }
    body.push_str("</tbody></table>\n");
    if row.backups.snapshots.is_empty() {
        body.push_str("<p class=\"muted\">No backups yet.</p>\n");
    }
    body.push_str(&format!(
        "<p><a href=\"/panel/vms/{}\">Back to {}</a></p>\n",
        row.vm,
        escape(name)
    ));
    frame(chrome, &format!("Backups of {name} · hearth"), &body)
}

/// The VM's schedule in a sentence, if it has one.
fn schedule_of(row: &BackupRow) -> String {
    let (Some(policy), Some(next)) = (&row.policy, row.next_ms) else {
        return "<p id=\"schedule\" class=\"muted\">No scheduled backups.</p>\n".into();
    };
    let keep = &policy.keep;
    let kept = match keep.keeps_all() {
        true => "every backup is kept".to_owned(),
        false => format!(
            "the newest of each of the last {} days, {} weeks and {} months are kept",
            keep.daily, keep.weekly, keep.monthly
        ),
    };
    format!(
        "<p id=\"schedule\">Backed up every day at {} ({}); the next at {} UTC. Of the scheduled and your own backups, {kept}.</p>\n",
        escape(&policy.at),
        escape(&policy.time_zone),
        time_of(next)
    )
}

/// `/panel/vms/{id}/backups/{snapshot}/restore`: the one confirmation.
/// The form that makes a new VM from the snapshot, leaving the VM as it is.
fn new_vm_form(chrome: &Chrome, base: &str, name: &str, snapshot: &str, when: &str) -> String {
    format!(
        "<h2>Or make a new VM from it</h2>\n<p>A new VM like <strong>{name}</strong>, with addresses of its own, starts on the disk as it was at {when} UTC; {name} is left as it is.</p>\n<form id=\"restore-new\" method=\"post\" action=\"{base}/{}/restore-new\">{}<label>Name <input name=\"name\" required pattern=\"[a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?\" value=\"{name}-restored\"></label> <button type=\"submit\">Make the new VM</button></form>\n",
        escape(snapshot),
        hidden_csrf(chrome.csrf),
        name = escape(name),
    )
}

pub fn restore_page(chrome: &Chrome, name: &str, vm: &str, snapshot: &BackupSnapshot) -> String {
    let when = time_of(snapshot.time_ms);
    let base = format!("/panel/vms/{vm}/backups");
    let body = format!(
        "<h1>Restore {name}?</h1>\n<p id=\"restore-question\">Replace the disk of <strong>{name}</strong> with its backup of <strong>{when} UTC</strong>? The VM stops, everything written to its disk since then is set aside (kept on its server, not deleted), and it starts again as it was at that time.</p>\n<p>{} <a href=\"{base}\">Cancel</a></p>\n",
        post_button(
            &format!("{base}/{}/restore", escape(&snapshot.id)),
            &format!("Replace the disk with the backup of {when}"),
            chrome.csrf,
            "danger"
        ),
        name = escape(name),
    );
    let body = body + &new_vm_form(chrome, &base, name, &snapshot.id, &when);
    frame(chrome, &format!("Restore {name} · hearth"), &body)
}
