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
