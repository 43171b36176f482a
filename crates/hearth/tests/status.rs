//! The public status page with real agents: no token needed, a failing instance shows as
//! degraded, a posted notice reaches every node's page (escaped), and the page keeps
//! answering from the node's own view when the Raft group has lost its quorum.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TestCluster, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn page(cluster: &TestCluster, idx: usize) -> Result<String, String> {
    match cluster.agents[idx].http_get("/status", false)? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("{status}: {body}")),
    }
}

#[test]
fn the_status_page_shows_health_and_notices_and_survives_a_lost_quorum() {
    let mut cluster = TestCluster::start(bin(), 3, |idx| {
        let check = if idx == 2 { "false" } else { "true" };
        format!(
            "[state]\nbootstrap_expect = 3\n\n[[service]]\nname = \"www\"\naddress = \"192.0.2.{}\"\n[service.check]\nexec = [\"{check}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n",
            idx + 1
        )
    });
    // One of three instances fails: degraded, 2 of 3, with no token.
    let html = eventually("www degraded on n1's page", DEADLINE, || {
        let html = page(&cluster, 0)?;
        if html.contains("Some services are degraded")
            && html.contains("<td>www</td><td class=\"warn\">degraded</td><td>2 of 3</td>")
            && html.contains("3 of 3 nodes up")
        {
            Ok(html)
        } else {
            Err(html)
        }
    });
    assert!(html.contains("name=\"viewport\""), "phone-friendly: {html}");
    assert!(!html.contains("<script"), "no JavaScript needed: {html}");

    // An admin posts an incident through one node; every node's page shows it, escaped.
    eventually("a writable group", DEADLINE, || {
        let (status, body) = cluster.agents[0].http_send(
            "PUT",
            "/v1/notices",
            r#"{"notice": {"id": "db-outage", "kind": "incident", "title": "Database <down>", "body": "We are on it & will post updates."}}"#,
        )?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    });
    for idx in 0..3 {
        eventually(
            &format!("the notice on n{}'s page", idx + 1),
            DEADLINE,
            || {
                let html = page(&cluster, idx)?;
                if html.contains("Incident: Database &lt;down&gt;")
                    && html.contains("We are on it &amp; will post updates.")
                    && html.contains("ongoing")
                {
                    Ok(())
                } else {
                    Err(html)
                }
            },
        );
    }
    let listed = cluster.agents[1].cli(&["notice", "list"]);
    assert!(
        listed.contains("db-outage") && listed.contains("open"),
        "{listed}"
    );

    // Two of three servers die: no quorum. The page still answers from n1's own view.
    cluster.agents[1].kill9();
    cluster.agents[2].kill9();
    eventually("n1's page counts 1 node up", DEADLINE, || {
        let html = page(&cluster, 0)?;
        if html.contains("1 of 3 nodes up") && html.contains("Database &lt;down&gt;") {
            Ok(())
        } else {
            Err(html)
        }
    });
    let (status, body) = cluster.agents[0]
        .http_send(
            "PUT",
            "/v1/notices",
            r#"{"notice": {"id": "later", "kind": "maintenance", "title": "x"}}"#,
        )
        .unwrap();
    assert_eq!(status, 503, "writes need the quorum that is gone: {body}");
    let (status, json) = cluster.agents[0].http_get("/status.json", false).unwrap();
    assert_eq!(status, 200, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["nodes_up"], 1, "{json}");
    assert_eq!(json["notices"][0]["id"], "db-outage", "{json}");
}

/// Today's bar for `service` in `/status.json` on agent `idx`: (known ms, up ms).
fn today(cluster: &TestCluster, idx: usize, service: &str) -> Result<(u64, u64), String> {
    let (status, json) = cluster.agents[idx].http_get("/status.json", false)?;
    if status != 200 {
        return Err(format!("{status}: {json}"));
    }
    let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let services = json["services"].as_array().ok_or(json.to_string())?;
    let row = services
        .iter()
        .find(|s| s["name"] == service)
        .ok_or(format!("no {service}: {json}"))?;
    let days = row["days"].as_array().ok_or(row.to_string())?;
    if days.len() != 90 {
        return Err(format!("{} days: {row}", days.len()));
    }
    let last = &days[89];
    Ok((
        last["known_ms"].as_u64().unwrap_or(0),
        last["up_ms"].as_u64().unwrap_or(0),
    ))
}

#[test]
fn uptime_is_sampled_by_the_leader_and_every_node_draws_the_same_bars() {
    let flag = hearth_testkit::TempDir::new("uptime-flag");
    let up_file = flag.path().join("mail-up");
    let up = up_file.display().to_string();
    let mut cluster = TestCluster::start(bin(), 3, move |idx| {
        // www passes everywhere; mail runs only on n3 and passes once the file exists.
        let mail = match idx {
            2 => format!(
                "[[service]]\nname = \"mail\"\naddress = \"192.0.2.9\"\n[service.check]\nexec = [\"test\", \"-e\", \"{up}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n"
            ),
            _ => String::new(),
        };
        format!(
            "[state]\nbootstrap_expect = 3\nuptime_interval = \"200ms\"\n\n[[service]]\nname = \"www\"\naddress = \"192.0.2.{}\"\n[service.check]\nexec = [\"true\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n{mail}",
            idx + 1
        )
    });
    // Every node reads the same replicated history: www all up, mail all down so far.
    for idx in 0..3 {
        eventually(&format!("n{}'s bars", idx + 1), DEADLINE, || {
            let (known, up) = today(&cluster, idx, "www")?;
            let (mail_known, mail_up) = today(&cluster, idx, "mail")?;
            if known >= 1000 && up == known && mail_known >= 1000 && mail_up == 0 {
                Ok(())
            } else {
                Err(format!("www {up}/{known}, mail {mail_up}/{mail_known}"))
            }
        });
    }
    // mail comes up: today is now partly up, and the page says so with a bar and a figure.
    std::fs::write(&up_file, "").unwrap();
    let (known, up) = eventually("mail partly up today", DEADLINE, || {
        match today(&cluster, 1, "mail")? {
            (known, up) if up >= 1000 && up < known => Ok((known, up)),
            other => Err(format!("{other:?}")),
        }
    });
    let html = page(&cluster, 1).unwrap();
    assert!(
        html.contains("<svg class=\"bars\" id=\"uptime-mail\""),
        "{html}"
    );
    assert_eq!(html.matches("<rect").count(), 2 * 90, "{html}");
    assert!(
        html.contains(": no data</title>"),
        "older days are unknown: {html}"
    );
    assert!(
        html.contains("<strong>www</strong><span>100.00 % up</span>"),
        "{html}"
    );
    let figure = html
        .split("<strong>mail</strong><span>")
        .nth(1)
        .and_then(|rest| rest.split(" % up</span>").next())
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("mail's figure: {html}"));
    assert!(figure > 0.0 && figure < 100.0, "{figure} ({up} of {known})");

    // The leader dies; the new one goes on sampling, so the history keeps growing.
    let leader = eventually("a known leader", DEADLINE, || {
        let state = cluster.agents[0].state()?;
        let name = state["leader"].as_str().unwrap_or_default().to_owned();
        cluster
            .agents
            .iter()
            .position(|a| a.spec.name == name)
            .ok_or(format!("leader: {state}"))
    });
    cluster.agents[leader].kill9();
    let other = (leader + 1) % 3;
    let (before, _) = today(&cluster, other, "www").unwrap();
    eventually("the new leader samples", DEADLINE, || {
        match today(&cluster, other, "www")? {
            (known, up) if known > before + 2000 && up == known => Ok(()),
            other => Err(format!("{other:?} (was {before})")),
        }
    });
}
