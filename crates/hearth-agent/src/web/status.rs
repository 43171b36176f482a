//! The public status page (`/status`, and `/status.json`): every service's health and how
//! many nodes are up, from this node's own gossip view, plus 90 days of each service's uptime
//! and the incidents and maintenance notes admins posted (as bars and a timeline), from its
//! own copy of the desired state. Nothing here waits on another node or on a quorum, so the
//! page stays up while the rest is down.

use super::html::{escape, page, utc};
use super::svg;
use hearth_types::notice::{Notice, NoticeKind};
use hearth_types::status::{Health, ServiceStatus, Status, UptimeDay};
use hearth_types::uptime::{self, DAYS, ServiceUptime};
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

/// What the page shows besides the gossip view: the posted notices and the recorded uptime,
/// as of `now_ms` (Unix milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub notices: &'a [&'a Notice],
    pub uptime: &'a BTreeMap<String, ServiceUptime>,
    pub now_ms: u64,
}

/// Whether each service in the view is available (some instance passes on an up node): what
/// the Raft leader samples for the uptime bars.
pub fn availability(view: &View) -> BTreeMap<String, bool> {
    health(view)
        .into_iter()
        .map(|(name, (passing, _))| (name, passing > 0))
        .collect()
}

/// Each service's (passing, instances) on up nodes; a service whose every node is down shows
/// with none.
fn health(view: &View) -> BTreeMap<String, (usize, usize)> {
    let mut services: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for member in view.members.values() {
        let up = member.state.is_up();
        if member.state == MemberState::Left {
            continue;
        }
        for instance in &member.services {
            let entry = services
                .entry(instance.service.to_ascii_lowercase())
                .or_default();
            if up {
                entry.1 += 1;
                if instance.status == CheckStatus::Passing {
                    entry.0 += 1;
                }
            }
        }
    }
    services
}

/// The last [`DAYS`] days of a service's history, oldest first, and its uptime in percent.
fn days(history: Option<&ServiceUptime>, today: u64) -> (Vec<UptimeDay>, Option<f64>) {
    let first = today + 1 - u64::from(DAYS);
    let (mut known, mut up) = (0u64, 0u64);
    let days = (first..=today)
        .map(|day| {
            let d = history
                .and_then(|h| h.days.get(&day))
                .copied()
                .unwrap_or_default();
            known += d.known_ms;
            up += d.up_ms;
            UptimeDay {
                date: uptime::date(day),
                known_ms: d.known_ms,
                up_ms: d.up_ms,
            }
        })
        .collect();
    (days, (known > 0).then(|| up as f64 * 100.0 / known as f64))
}

/// The status from a gossip view and the recorded history.
pub fn status(view: &View, history: History<'_>) -> Status {
    let today = uptime::day_of(history.now_ms);
    let members: Vec<_> = view
        .members
        .values()
        .filter(|m| m.state != MemberState::Left)
        .collect();
    let services = health(view)
        .into_iter()
        .map(|(name, (passing, instances))| {
            let (days, uptime_percent) = days(history.uptime.get(&name), today);
            ServiceStatus {
                health: match passing {
                    0 => Health::Down,
                    n if n == instances => Health::Operational,
                    _ => Health::Degraded,
                },
                name,
                passing,
                instances,
                days,
                uptime_percent,
            }
        })
        .collect();
    let first_day = today + 1 - u64::from(DAYS);
    let mut timeline: Vec<Notice> = history
        .notices
        .iter()
        .filter(|n| n.resolved_at.is_none_or(|at| at / 86_400 >= first_day))
        .map(|n| (*n).clone())
        .collect();
    timeline.sort_by(|a, b| a.posted_at.cmp(&b.posted_at).then(a.id.cmp(&b.id)));
    let mut open: Vec<Notice> = Vec::new();
    let mut resolved: Vec<Notice> = Vec::new();
    for notice in history.notices.iter().copied() {
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
        timeline,
        since: uptime::date(first_day),
        since_day: first_day,
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
        body.push_str(&uptime_section(status));
    }
    body.push_str(&timeline_section(status));
    body.push_str(&format!(
        "<p class=\"muted\">Served by {} from its own view; <a href=\"/status.json\">JSON</a>.</p>",
        escape(&status.node)
    ));
    page("Status", &body)
}

/// Each service's 90 bars, one per day, with its uptime over them.
fn uptime_section(status: &Status) -> String {
    let mut out = format!("<h2>Uptime, last {DAYS} days</h2>\n");
    for service in &status.services {
        let bars: Vec<svg::Bar> = service
            .days
            .iter()
            .map(|day| {
                let ratio = (day.known_ms > 0).then(|| day.up_ms as f64 / day.known_ms as f64);
                svg::Bar {
                    title: match ratio {
                        Some(r) => format!("{}: {} up", day.date, percent(r * 100.0)),
                        None => format!("{}: no data", day.date),
                    },
                    fill: svg::uptime_fill(ratio),
                }
            })
            .collect();
        let total = service
            .uptime_percent
            .map_or("no data yet".to_owned(), |p| format!("{} up", percent(p)));
        let name = escape(&service.name);
        out.push_str(&format!(
            "<div class=\"uptime\"><div class=\"axis\"><strong>{name}</strong><span>{total}</span></div>{}\
<div class=\"axis muted\"><span>{}</span><span>today</span></div></div>\n",
            svg::bars(
                &format!("uptime-{}", service.name),
                &format!("{}: {total} over {DAYS} days", service.name),
                &bars
            ),
            escape(&status.since),
        ));
    }
    out
}

/// `99.95 %`: two decimals, but never rounded up to 100 unless it is.
fn percent(p: f64) -> String {
    let floored = (p * 100.0).floor() / 100.0;
    format!("{floored:.2} %")
}

/// The incidents and maintenance windows of the last 90 days, as spans on a timeline.
fn timeline_section(status: &Status) -> String {
    let mut out = format!("<h2>Incident history, last {DAYS} days</h2>\n");
    if status.timeline.is_empty() {
        out.push_str("<p class=\"muted\">No incidents or maintenance.</p>\n");
        return out;
    }
    let since = status.since_day as f64;
    let spans: Vec<svg::Span> = status
        .timeline
        .iter()
        .map(|notice| {
            let start = notice.posted_at as f64 / 86_400.0 - since;
            let end = notice
                .resolved_at
                .map_or(f64::from(DAYS), |at| at as f64 / 86_400.0 - since);
            let kind = match notice.kind {
                NoticeKind::Incident => "Incident",
                NoticeKind::Maintenance => "Maintenance",
            };
            let until = notice
                .resolved_at
                .map_or("ongoing".to_owned(), |at| format!("until {}", utc(at)));
            svg::Span {
                start,
                end,
                label: notice.title.clone(),
                title: format!(
                    "{kind}: {}, from {} {until}",
                    notice.title,
                    utc(notice.posted_at)
                ),
                fill: match notice.kind {
                    NoticeKind::Incident => svg::BAD,
                    NoticeKind::Maintenance => svg::POOR,
                },
            }
        })
        .collect();
    out.push_str(&svg::timeline(
        "timeline",
        &format!("{} notices over the last {DAYS} days", spans.len()),
        DAYS,
        &spans,
    ));
    out.push_str(&format!(
        "<div class=\"axis muted\"><span>{}</span><span>today</span></div>\n",
        escape(&status.since)
    ));
    out
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

    /// 2026-12-04 12:00 UTC.
    const NOW_MS: u64 = 1_796_385_600_000;

    fn history<'a>(
        notices: &'a [&'a Notice],
        uptime: &'a BTreeMap<String, ServiceUptime>,
    ) -> History<'a> {
        History {
            notices,
            uptime,
            now_ms: NOW_MS,
        }
    }

    #[test]
    fn ninety_days_of_bars_and_a_timeline_of_notices() {
        let mut view = View::default();
        let m = member("n1", MemberState::Alive, &[("www", CheckStatus::Failing)]);
        view.members.insert("n1".into(), m);
        assert_eq!(
            availability(&view),
            BTreeMap::from([("www".to_owned(), false)])
        );
        // Up for a minute yesterday, then half of two minutes today.
        let mut uptime = BTreeMap::new();
        let sample = |uptime: &mut BTreeMap<String, ServiceUptime>, at: u64, up: bool| {
            hearth_types::uptime::record(uptime, at, &BTreeMap::from([("www".to_owned(), up)]))
        };
        let yesterday = NOW_MS - 86_400_000;
        sample(&mut uptime, yesterday, true);
        sample(&mut uptime, yesterday + 60_000, false);
        sample(&mut uptime, NOW_MS - 120_000, true);
        sample(&mut uptime, NOW_MS - 60_000, false);
        sample(&mut uptime, NOW_MS, false);
        let notice = |id: &str, kind, posted: u64, resolved: Option<u64>| Notice {
            id: id.into(),
            kind,
            title: format!("{id} <i>"),
            body: String::new(),
            posted_at: posted,
            resolved_at: resolved,
        };
        let now = NOW_MS / 1000;
        let notices = [
            notice("long-ago", NoticeKind::Incident, 1, Some(2)),
            notice("db", NoticeKind::Incident, now - 3600, None),
            notice(
                "upgrade",
                NoticeKind::Maintenance,
                now - 86_400 * 10,
                Some(now - 86_400 * 9),
            ),
        ];
        let notices: Vec<&Notice> = notices.iter().collect();
        let s = status(&view, history(&notices, &uptime));
        let www = &s.services[0];
        assert_eq!(www.days.len(), 90);
        assert_eq!(www.days[89].date, "2026-12-04");
        assert_eq!(
            (www.days[89].known_ms, www.days[89].up_ms),
            (120_000, 60_000)
        );
        assert_eq!(
            (www.days[88].known_ms, www.days[88].up_ms),
            (60_000, 60_000)
        );
        assert_eq!(www.days[0].known_ms, 0);
        assert_eq!(s.since, "2026-09-06");
        let percent = www.uptime_percent.expect("known");
        assert!((percent - 200.0 / 3.0).abs() < 1e-9, "{percent}");
        // The timeline holds what was open within the 90 days, oldest first.
        let ids: Vec<&str> = s.timeline.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["upgrade", "db"]);

        let html = render(&s);
        assert!(html.contains("<h2>Uptime, last 90 days</h2>"), "{html}");
        assert!(html.contains("<span>66.66 % up</span>"), "{html}");
        assert_eq!(html.matches("<rect").count(), 90 + 2, "{html}");
        assert!(
            html.contains("<title>2026-12-04: 50.00 % up</title>"),
            "{html}"
        );
        assert!(
            html.contains("<title>2026-12-03: 100.00 % up</title>"),
            "{html}"
        );
        assert!(
            html.contains("<title>2026-09-06: no data</title>"),
            "{html}"
        );
        assert!(html.contains(&format!("fill=\"{}\"><title>2026-12-04", svg::BAD)));
        assert!(html.contains(">db &lt;i&gt;</text>"), "{html}");
        assert!(html.contains("<title>Maintenance: upgrade &lt;i&gt;, from 2026-11-24 12:00 UTC until 2026-11-25 12:00 UTC</title>"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
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
        let s = status(&view, history(&[], &BTreeMap::new()));
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
        let notices: Vec<&Notice> = notices.iter().collect();
        let s = status(&View::default(), history(&notices, &BTreeMap::new()));
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
