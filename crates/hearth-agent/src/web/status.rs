//! The public status page (`/status`, and `/status.json`): every service's health and how
//! many nodes are up, from this node's own gossip view, plus the incidents and maintenance
//! notes admins posted, from its own copy of the desired state. Nothing here waits on another
//! node or on a quorum, so the page stays up while the rest is down.

use super::html::{escape, page, utc};
use hearth_types::notice::{Notice, NoticeKind};
use hearth_types::status::{Health, ServiceStatus, Status};
use hearth_types::{CheckStatus, MemberState, View};
use std::collections::BTreeMap;

/// Resolved notices shown below the open ones.
const RECENT_RESOLVED: usize = 5;

/// A health's word and its CSS class on the page.
fn label(health: Health) -> (&'static str, &'static str) {
    match health {
        Health::Operational => ("operational", "ok"),
        Health::Degraded => ("degraded", "warn"),
        Health::Down => ("down", "bad"),
    }
}

/// The status from a gossip view and the posted notices.
pub fn status<'a>(view: &View, notices: impl Iterator<Item = &'a Notice>) -> Status {
    let members: Vec<_> = view
        .members
        .values()
        .filter(|m| m.state != MemberState::Left)
        .collect();
    let mut services: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for member in members.iter().filter(|m| m.state.is_up()) {
        for instance in &member.services {
            let entry = services
                .entry(instance.service.to_ascii_lowercase())
                .or_default();
            entry.1 += 1;
            if instance.status == CheckStatus::Passing {
                entry.0 += 1;
            }
        }
    }
    // A service whose every node is down still shows, as down.
    for member in members.iter().filter(|m| !m.state.is_up()) {
        for instance in &member.services {
            services
                .entry(instance.service.to_ascii_lowercase())
                .or_default();
        }
    }
    let services = services
        .into_iter()
        .map(|(name, (passing, instances))| ServiceStatus {
            health: match passing {
                0 => Health::Down,
                n if n == instances => Health::Operational,
                _ => Health::Degraded,
            },
            name,
            passing,
            instances,
        })
        .collect();
    let mut open: Vec<Notice> = Vec::new();
    let mut resolved: Vec<Notice> = Vec::new();
    for notice in notices {
        if notice.resolved_at.is_some() {
            resolved.push(notice.clone());
        } else {
            open.push(notice.clone());
        }
    }
    open.sort_by(|a, b| b.posted_at.cmp(&a.posted_at).then(a.id.cmp(&b.id)));
    resolved.sort_by(|a, b| b.resolved_at.cmp(&a.resolved_at).then(a.id.cmp(&b.id)));
    open.extend(resolved.into_iter().take(RECENT_RESOLVED));
    Status {
        node: view.self_name.clone(),
        nodes_up: members.iter().filter(|m| m.state.is_up()).count(),
        nodes: members.len(),
        services,
        notices: open,
    }
}

/// The HTML page.
pub fn render(status: &Status) -> String {
    let mut body = String::new();
    let worst = status
        .services
        .iter()
        .map(|s| s.health)
        .max_by_key(|h| match h {
            Health::Operational => 0,
            Health::Degraded => 1,
            Health::Down => 2,
        })
        .unwrap_or(Health::Operational);
    let headline = match worst {
        Health::Operational => "All services are operational",
        Health::Degraded => "Some services are degraded",
        Health::Down => "Some services are down",
    };
    body.push_str(&format!(
        "<h1 class=\"{}\">{headline}</h1>\n<p>{} of {} nodes up.</p>\n",
        label(worst).1,
        status.nodes_up,
        status.nodes
    ));
    if !status.notices.is_empty() {
        body.push_str("<h2>Notices</h2>\n");
        for notice in &status.notices {
            let (class, state) = match notice.resolved_at {
                Some(at) => ("resolved", format!("resolved {}", utc(at))),
                None => ("", "ongoing".to_owned()),
            };
            body.push_str(&format!(
                "<div class=\"notice {} {class}\" id=\"notice-{}\"><strong>{}: {}</strong> \
<span class=\"muted\">posted {}, {state}</span><p>{}</p></div>\n",
                notice.kind.as_str(),
                escape(&notice.id),
                match notice.kind {
                    NoticeKind::Incident => "Incident",
                    NoticeKind::Maintenance => "Maintenance",
                },
                escape(&notice.title),
                utc(notice.posted_at),
                escape(&notice.body),
            ));
        }
    }
    body.push_str("<h2>Services</h2>\n");
    if status.services.is_empty() {
        body.push_str("<p class=\"muted\">No services are declared.</p>\n");
    } else {
        body.push_str(
            "<table><tr><th>service</th><th>status</th><th>healthy instances</th></tr>\n",
        );
        for service in &status.services {
            let (label, class) = label(service.health);
            body.push_str(&format!(
                "<tr id=\"service-{name}\"><td>{name}</td><td class=\"{class}\">{label}</td><td>{} of {}</td></tr>\n",
                service.passing,
                service.instances,
                name = escape(&service.name),
            ));
        }
        body.push_str("</table>\n");
    }
    body.push_str(&format!(
        "<p class=\"muted\">Served by {} from its own view; <a href=\"/status.json\">JSON</a>.</p>",
        escape(&status.node)
    ));
    page("Status", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::{Member, NodeMeta, ServiceInstance};
    use std::net::IpAddr;

    fn member(name: &str, state: MemberState, services: &[(&str, CheckStatus)]) -> Member {
        Member {
            meta: NodeMeta {
                name: name.into(),
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                address: IpAddr::from([192, 0, 2, 1]),
                roles: vec![],
                tags: BTreeMap::new(),
                rpc_addr: None,
                in_group: false,
            },
            state,
            services: services
                .iter()
                .map(|(s, status)| ServiceInstance {
                    service: (*s).into(),
                    address: IpAddr::from([192, 0, 2, 1]),
                    status: *status,
                })
                .collect(),
        }
    }

    #[test]
    fn health_counts_only_up_nodes_and_a_dead_only_service_is_down() {
        let mut view = View {
            self_name: "n1".into(),
            ..View::default()
        };
        for m in [
            member(
                "n1",
                MemberState::Alive,
                &[("www", CheckStatus::Passing), ("db", CheckStatus::Passing)],
            ),
            member("n2", MemberState::Alive, &[("www", CheckStatus::Failing)]),
            member(
                "n3",
                MemberState::Dead,
                &[
                    ("www", CheckStatus::Passing),
                    ("mail", CheckStatus::Passing),
                ],
            ),
        ] {
            view.members.insert(m.meta.name.clone(), m);
        }
        let s = status(&view, std::iter::empty());
        assert_eq!((s.nodes_up, s.nodes), (2, 3));
        let by_name: BTreeMap<_, _> = s.services.iter().map(|x| (x.name.as_str(), x)).collect();
        assert_eq!(by_name["www"].health, Health::Degraded);
        assert_eq!((by_name["www"].passing, by_name["www"].instances), (1, 2));
        assert_eq!(by_name["db"].health, Health::Operational);
        assert_eq!(by_name["mail"].health, Health::Down);
        let html = render(&s);
        assert!(html.contains("Some services are down"), "{html}");
        assert!(html.contains("2 of 3 nodes up"), "{html}");
    }

    #[test]
    fn open_notices_come_first_and_text_is_escaped() {
        let notice = |id: &str, posted: u64, resolved: Option<u64>| Notice {
            id: id.into(),
            kind: NoticeKind::Incident,
            title: format!("<b>{id}</b>"),
            body: "disk & db".into(),
            posted_at: posted,
            resolved_at: resolved,
        };
        let notices = [
            notice("old", 1, Some(5)),
            notice("new", 10, None),
            notice("mid", 5, None),
        ];
        let s = status(&View::default(), notices.iter());
        let ids: Vec<&str> = s.notices.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["new", "mid", "old"]);
        let html = render(&s);
        assert!(
            html.contains("&lt;b&gt;new&lt;/b&gt;") && html.contains("disk &amp; db"),
            "{html}"
        );
        assert!(!html.contains("<b>new"), "{html}");
        assert!(!html.contains("<script"));
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_914_240), "2026-11-29 01:04 UTC");
        assert_eq!(utc(1_709_208_000), "2024-02-29 12:00 UTC");
    }
}
