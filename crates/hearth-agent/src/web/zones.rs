//! The panel's pages for members' own DNS zones, as pure functions over the API's rows: the
//! list with the claim form, and one zone with its proof, record sets and followed names.

use hearth_types::api::{VmRow, ZoneRow};

use super::escape;
use super::pages::{Chrome, frame, hidden_csrf};

/// The record types a member may put, in the order the form offers them.
pub const TYPES: [&str; 7] = ["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA"];

/// How each type's values are written in the form, as a hint.
fn hint(kind: &str) -> &'static str {
    match kind {
        "A" => "192.0.2.10",
        "AAAA" => "2001:db8::10",
        "CNAME" => "www.example.org.",
        "MX" => "10 mail.example.org.",
        "TXT" => "v=spf1 mx -all",
        "SRV" => "0 5 993 imap.example.org.",
        "CAA" => "0 issue letsencrypt.org",
        _ => "",
    }
}

/// A POST form of one button with hidden fields besides the CSRF token; the button carries
/// them as `data-` attributes too, so a script (or a test) can find the one it wants.
fn post_with(action: &str, label: &str, csrf: &str, fields: &[(&str, &str)]) -> String {
    let hidden: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(value)
            )
        })
        .collect();
    let data: String = fields
        .iter()
        .map(|(name, value)| format!(" data-{name}=\"{}\"", escape(value)))
        .collect();
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">{}{hidden}<button class=\"danger\"{data}>{}</button></form>",
        escape(action),
        hidden_csrf(csrf),
        escape(label)
    )
}

fn status(row: &ZoneRow) -> &'static str {
    match row.zone.verified {
        true => "<span class=\"ok\">answered</span>",
        false => "<span class=\"warn\">not verified</span>",
    }
}

/// `/panel/zones`: the caller's zones (an admin's: everyone's) and the claim form.
pub fn zones_page(chrome: &Chrome, zones: &[ZoneRow], quota: Option<u64>) -> String {
    let mut body = String::from(
        "<h1>Your domains</h1>\n<p class=\"muted\">Every server of the co-op answers for a domain you proved is yours, with the records you put here. Point the domain's NS records at the co-op's name servers at your registrar.</p>\n",
    );
    if zones.is_empty() {
        body.push_str("<p class=\"muted\">No domains yet.</p>\n");
    } else {
        body.push_str("<table id=\"zones\"><tr><th>domain</th><th>owner</th><th>status</th><th class=\"num\">records</th></tr>\n");
        for row in zones {
            let zone = &row.zone;
            body.push_str(&format!(
                "<tr><td><a href=\"/panel/zones/{apex}\">{apex}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>\n",
                escape(&zone.owner),
                status(row),
                zone.records.len() + zone.follows.len(),
                apex = escape(&zone.apex),
            ));
        }
        body.push_str("</table>\n");
    }
    let quota = quota.map_or(String::new(), |q| {
        format!(" <span class=\"muted\">(your plan allows {q})</span>")
    });
    body.push_str(&format!(
        "<h2>Add a domain{quota}</h2>\n<form class=\"stack\" method=\"post\" action=\"/panel/zones\" id=\"claim\">{}\
<label for=\"apex\">Domain</label><input id=\"apex\" name=\"apex\" required maxlength=\"235\" placeholder=\"example.org\">\
<p><button id=\"claim-zone\">Add</button></p></form>\n",
        hidden_csrf(chrome.csrf)
    ));
    frame(chrome, "Domains · hearth", &body)
}

/// The TXT record to put, and the buttons that check it (or, for admins, approve).
fn proof(chrome: &Chrome, row: &ZoneRow) -> String {
    let zone = &row.zone;
    if zone.verified {
        return "<p id=\"proof\" class=\"ok\">Verified: every server answers for this domain.</p>\n"
            .into();
    }
    let action = format!("/panel/zones/{}/verify", zone.apex);
    let mut out = format!(
        "<section id=\"proof\"><p>Prove the domain is yours: at your current DNS host, put this record, then check.</p>\
<pre id=\"challenge\">{}. TXT \"{}\"</pre>\
<form class=\"inline\" method=\"post\" action=\"{}\">{}<button id=\"verify\">Check now</button></form>",
        escape(&row.challenge_name),
        escape(&zone.challenge),
        escape(&action),
        hidden_csrf(chrome.csrf),
    );
    if chrome.admin {
        out.push_str(&format!(
            " <form class=\"inline\" method=\"post\" action=\"{}?approve=true\">{}<button id=\"approve\">Approve without the record</button></form>",
            escape(&action),
            hidden_csrf(chrome.csrf),
        ));
    }
    out.push_str("</section>\n");
    out
}

/// The zone's record sets and followed names, each with its remove button.
fn records(chrome: &Chrome, row: &ZoneRow) -> String {
    let zone = &row.zone;
    if zone.records.is_empty() && zone.follows.is_empty() {
        return "<p class=\"muted\">No records yet.</p>\n".into();
    }
    let base = format!("/panel/zones/{}", zone.apex);
    let mut out = String::from(
        "<div class=\"scroll\"><table id=\"records\"><tr><th>name</th><th>type</th><th>values</th><th>TTL</th><th></th></tr>\n",
    );
    for set in zone.records.values() {
        let kind = set.values.first().map_or("", |v| v.type_name());
        let values: Vec<String> = set.values.iter().map(|v| v.value_text()).collect();
        out.push_str(&format!(
            "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&set.name),
            escape(&values.join(", ")),
            set.ttl.map(|t| t.to_string()).unwrap_or_default(),
            post_with(
                &format!("{base}/records/delete"),
                "Remove",
                chrome.csrf,
                &[("name", &set.name), ("rtype", kind)]
            ),
        ));
    }
    for (name, vm) in &zone.follows {
        out.push_str(&format!(
            "<tr><td>{}</td><td>A/AAAA</td><td>follows VM <a href=\"/panel/vms/{vm}\">{vm}</a></td><td></td><td>{}</td></tr>\n",
            escape(name),
            post_with(
                &format!("{base}/unfollow"),
                "Stop following",
                chrome.csrf,
                &[("name", name)]
            ),
            vm = escape(vm),
        ));
    }
    out.push_str("</table></div>\n");
    out
}

/// The forms that put a record set and make a name follow a VM.
fn forms(chrome: &Chrome, row: &ZoneRow, vms: &[VmRow]) -> String {
    let base = format!("/panel/zones/{}", escape(&row.zone.apex));
    let types: String = TYPES
        .iter()
        .map(|t| format!("<option value=\"{t}\">{t}: {}</option>", escape(hint(t))))
        .collect();
    let mut out = format!(
        "<h2>Put a record set</h2>\n<p class=\"muted\">The name is relative to the domain (<code>www</code>, or <code>@</code> for the domain itself). Several values go on separate lines; a set replaces the one of the same name and type.</p>\n\
<form class=\"stack\" method=\"post\" action=\"{base}/records\" id=\"put-set\">{}\
<label for=\"set-name\">Name</label><input id=\"set-name\" name=\"name\" required maxlength=\"200\" placeholder=\"www\">\
<label for=\"set-type\">Type</label><select id=\"set-type\" name=\"rtype\">{types}</select>\
<label for=\"set-values\">Values</label><textarea id=\"set-values\" name=\"values\" rows=\"3\" required></textarea>\
<label for=\"set-ttl\">TTL (seconds, optional)</label><input id=\"set-ttl\" name=\"ttl\" inputmode=\"numeric\" pattern=\"[0-9]*\">\
<p><button id=\"put-record\">Save</button></p></form>\n",
        hidden_csrf(chrome.csrf),
    );
    let owned: Vec<&VmRow> = vms
        .iter()
        .filter(|v| v.vm.request.owner == row.zone.owner)
        .collect();
    out.push_str("<h2>Follow a VM</h2>\n");
    if owned.is_empty() {
        out.push_str("<p class=\"muted\">A name can follow one of the domain owner's VMs: its addresses, wherever it runs. There are no VMs yet.</p>\n");
        return out;
    }
    let options: String = owned
        .iter()
        .map(|v| format!("<option>{}</option>", escape(&v.vm.request.name)))
        .collect();
    out.push_str(&format!(
        "<p class=\"muted\">The name answers with the VM's addresses, and keeps up when they change.</p>\n\
<form class=\"stack\" method=\"post\" action=\"{base}/follows\" id=\"follow\">{}\
<label for=\"follow-name\">Name</label><input id=\"follow-name\" name=\"name\" required maxlength=\"200\" placeholder=\"@\">\
<label for=\"follow-vm\">VM</label><select id=\"follow-vm\" name=\"vm\">{options}</select>\
<p><button id=\"follow-vm-button\">Follow</button></p></form>\n",
        hidden_csrf(chrome.csrf),
    ));
    out
}

/// `/panel/zones/DOMAIN`: one zone.
pub fn zone_page(chrome: &Chrome, row: &ZoneRow, vms: &[VmRow]) -> String {
    let zone = &row.zone;
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"muted\">Owner {}.</p>\n{}<h2>Records</h2>\n{}",
        escape(&zone.apex),
        escape(&zone.owner),
        proof(chrome, row),
        records(chrome, row),
    );
    body.push_str(&forms(chrome, row, vms));
    body.push_str(&format!(
        "<h2>Release</h2>\n<p class=\"muted\">The servers stop answering for the domain, and its records are gone.</p>\n{}\n",
        post_with(
            &format!("/panel/zones/{}/delete", zone.apex),
            "Release this domain",
            chrome.csrf,
            &[]
        )
    ));
    frame(chrome, &format!("{} · hearth", zone.apex), &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::desired::{RecordData, RecordSet};
    use hearth_types::zones::MemberZone;

    fn row(verified: bool) -> ZoneRow {
        let mut zone = MemberZone {
            apex: "example.org".into(),
            owner: "ana".into(),
            challenge: "hearth-verify=abc".into(),
            verified,
            records: Default::default(),
            follows: Default::default(),
            created_at: 0,
        };
        zone.records.insert(
            "www/TXT".into(),
            RecordSet {
                name: "www".into(),
                ttl: None,
                values: vec![RecordData::Txt {
                    text: "<script>".into(),
                }],
            },
        );
        zone.follows.insert("@".into(), "web1".into());
        ZoneRow {
            challenge_name: zone.challenge_name(),
            zone,
            version: 1,
        }
    }

    fn chrome(admin: bool) -> Chrome<'static> {
        Chrome {
            user: "ana",
            admin,
            csrf: "tok",
            active: "/panel/zones",
            flash: None,
        }
    }

    #[test]
    fn an_unverified_zone_shows_its_challenge_and_only_admins_may_approve() {
        let member = zone_page(&chrome(false), &row(false), &[]);
        assert!(member.contains("_hearth-challenge.example.org. TXT \"hearth-verify=abc\""));
        assert!(member.contains("id=\"verify\"") && !member.contains("id=\"approve\""));
        let admin = zone_page(&chrome(true), &row(false), &[]);
        assert!(admin.contains("id=\"approve\""));
        let verified = zone_page(&chrome(false), &row(true), &[]);
        assert!(!verified.contains("id=\"challenge\"") && verified.contains("Verified"));
    }

    #[test]
    fn records_are_escaped_and_each_has_its_remove_form() {
        let page = zone_page(&chrome(false), &row(true), &[]);
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("action=\"/panel/zones/example.org/records/delete\""));
        assert!(page.contains("name=\"rtype\" value=\"TXT\""));
        assert!(page.contains("follows VM <a href=\"/panel/vms/web1\">web1</a>"));
        assert!(page.contains("action=\"/panel/zones/example.org/unfollow\""));
    }
}
