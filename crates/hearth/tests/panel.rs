//! The web panel end to end in real headless Chromium (Debian's chromium and chromedriver)
//! against a real agent that boots real QEMU guests: an admin logs in and creates members; a
//! member adds an SSH key, creates a VM, sees it running with its address, and cannot open
//! another member's VM by URL; the admin fixes a drift entry with one click and emails an
//! announcement (received by an SMTP sink the test runs); the status page shows a failing
//! service. Screenshots of the main pages go to `target/screenshots/`. A second test checks
//! the session rules without a browser: cookie flags, CSRF, the login rate limit, logout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_testkit::smtp::SmtpSink;
use hearth_testkit::webdriver::Browser;
use hearth_testkit::{TestAgent, TestCluster, eventually};

const BOOT: Duration = Duration::from_secs(120);
const PAGE: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// `target/screenshots/NAME.png`.
fn shot(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
        .join(format!("{name}.png"))
}

/// One server+worker agent with a failing `www` service, `[smtp]` at the sink, the test
/// guest image and a pool.
fn agent_with(extra: &str) -> TestCluster {
    let extra = extra.to_owned();
    let cluster = TestCluster::start_with(bin(), 1, move |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\nuptime_interval = \"200ms\"\n[compute]\nstats_interval = \"200ms\"\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n\
[[service]]\nname = \"www\"\naddress = \"{ip}\"\n[service.check]\nexec = [\"false\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n{extra}",
            ip = spec.ip
        );
    });
    let agent = &cluster.agents[0];
    eventually("the worker registered", BOOT, || {
        match agent.host_count()? {
            1 => Ok(()),
            n => Err(format!("{n} hosts")),
        }
    });
    cluster
}

fn create_admin(agent: &TestAgent, name: &str, password: &str) {
    let file = agent.dir.join(format!("{name}.password"));
    std::fs::write(&file, password).unwrap();
    agent.cli(&[
        "admin",
        "create",
        name,
        "--password-file",
        file.to_str().unwrap(),
    ]);
}

fn login(browser: &Browser, base: &str, name: &str, password: &str) {
    browser.goto(&format!("{base}/login"));
    browser.fill("#name", name);
    browser.fill("#password", password);
    browser.click("#login");
}

fn flash(browser: &Browser) -> String {
    browser.text("#flash").unwrap_or_default()
}

#[test]
fn admins_and_members_use_the_panel_in_a_real_browser() {
    let sink = SmtpSink::start(std::net::Ipv4Addr::LOCALHOST);
    let cluster = agent_with(&format!(
        "[smtp]\nserver = \"{}\"\nfrom = \"Test co-op <noreply@coop.test>\"\n",
        sink.addr()
    ));
    let agent = &cluster.agents[0];
    agent.add_test_guest(&hearth_testkit::test_guest());
    create_admin(agent, "ann", "ann's long password");
    let base = format!("http://{}", agent.api_addr());

    // A QEMU that hearth did not start: drift for the admin to fix later.
    let intruder_dir = agent.dir.join("data").join("vms").join("vm-999");
    std::fs::create_dir_all(&intruder_dir).unwrap();
    let mut intruder = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-S", "-qmp"])
        .arg(format!(
            "unix:{},server=on,wait=off",
            intruder_dir.join("qmp.sock").display()
        ))
        .spawn()
        .expect("start qemu-system-x86_64");
    let browser = Browser::start(1100, 900);

    // The admin logs in: the session cookie is Secure, HttpOnly and SameSite=Strict.
    login(&browser, &base, "ann", "ann's long password");
    assert!(browser.url().ends_with("/admin"), "{}", browser.url());
    let cookies = browser.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "hearth_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let nodes = browser.text("#nodes").unwrap();
    assert!(nodes.contains("alive"), "{nodes}");
    assert!(
        !browser.source().contains("<script"),
        "the pages need no JavaScript"
    );
    let meters = browser.script(
        "return [...document.querySelectorAll('#capacity-n1 rect.used')].map(r => r.getAttribute('width'))",
    );
    assert_eq!(
        meters,
        serde_json::json!(["0.0", "0.0", "0.0"]),
        "nothing placed yet"
    );

    // It creates two members.
    for (name, password) in [
        ("alice", "alice's long password"),
        ("bob", "bob's long password"),
    ] {
        browser.goto(&format!("{base}/admin/members"));
        browser.fill("#account-name", name);
        browser.fill("#email", &format!("{name}@coop.test"));
        browser.fill("#account-password", password);
        browser.click("#create-account");
        assert_eq!(flash(&browser), format!("Account {name} created."));
        assert!(browser.find(&format!("#account-{name}")).is_ok());
    }
    browser.screenshot(&shot("admin-members"));
    browser.click("nav button");
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // bob's VM, made through the API by root, stays stopped.
    let (status, body) = agent
        .http_send(
            "POST",
            "/v1/vms",
            r#"{"name":"b1","owner":"bob","vcpus":1,"memory_mib":128,"disk_gib":1,"image":"tiny","power":"stopped"}"#,
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let bob_vm = serde_json::from_str::<serde_json::Value>(&body).unwrap()["result"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // alice logs in, adds a key, creates a VM and sees it running with its address.
    login(&browser, &base, "alice", "alice's long password");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());
    assert!(
        browser
            .text("body")
            .unwrap()
            .contains("You have no VMs yet")
    );
    browser.goto(&format!("{base}/panel/account"));
    browser.fill("#key-name", "laptop");
    browser.fill(
        "#key-text",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJm6YHcV1vY4wRnmLBC3Ycr9g1+aG5p3a0u4p3P6mUqM alice@laptop",
    );
    browser.click("#add-key-button");
    assert_eq!(flash(&browser), "Key laptop added.");
    assert!(browser.find("#key-laptop").is_ok());
    browser.goto(&format!("{base}/panel"));
    browser.fill("#vm-name", "web1");
    browser.select("#image", "tiny");
    browser.select("#size", "tiny");
    browser.select("#key", "laptop");
    browser.select("#pool", "lan");
    browser.click("#create-vm");
    let vm_url = browser.url();
    assert!(vm_url.contains("/panel/vms/vm-"), "{vm_url}");
    assert_eq!(flash(&browser), "web1 is being created.");
    let text = browser.wait_for_text(&vm_url, "running", BOOT);
    assert!(text.contains("192.0.2."), "{text}");
    let console = eventually("the guest's console on the page", BOOT, || {
        browser.goto(&vm_url);
        let console = browser.text("#console")?;
        if console.contains("HEARTH-GUEST-READY") {
            Ok(console)
        } else {
            Err(console)
        }
    });
    // The guest got the one key chosen in the form.
    assert!(
        console.contains("HEARTH-GUEST hostname=web1 ip=192.0.2.") && console.contains("keys=1"),
        "{console}"
    );
    // Its load is charted: the guest booted on a CPU, and wrote to its disk.
    eventually("the VM's load charted", BOOT, || {
        browser.goto(&vm_url);
        let titles = browser.script(
            "return [...document.querySelectorAll('#chart-cpu title, #chart-disk title')].map(t => t.textContent).join('; ')",
        );
        let titles = titles.as_str().unwrap_or_default().to_owned();
        if titles.contains("CPU: peak")
            && !titles.contains("CPU: peak 0 %")
            && titles.contains("latest")
            && !titles.contains("latest none")
        {
            Ok(titles)
        } else {
            Err(titles)
        }
    });
    assert!(browser.find("#chart-net").is_ok());
    browser.screenshot(&shot("member-vm"));
    browser.goto(&format!("{base}/panel"));
    let vms = browser.text("#vms").unwrap();
    assert!(vms.contains("web1") && vms.contains("running"), "{vms}");
    assert!(
        browser.find("#vm-b1").is_err(),
        "alice sees only her VMs: {vms}"
    );
    browser.screenshot(&shot("member-vms"));

    // On a phone screen the page fits its width.
    browser.resize(390, 844);
    browser.goto(&format!("{base}/panel"));
    let fits =
        browser.script("return document.documentElement.scrollWidth <= window.innerWidth + 1");
    assert_eq!(fits, true, "the member page is wider than a phone");
    browser.screenshot(&shot("member-vms-phone"));
    browser.resize(1100, 900);

    // The power buttons go through the API: Stop asks for the VM to be stopped.
    browser.goto(&vm_url);
    browser.click("form[action$='/stop'] button");
    assert_eq!(flash(&browser), "stop: asked.");
    let id = vm_url.rsplit('/').next().unwrap().to_owned();
    eventually("web1 asked to stop", PAGE, || {
        let row = agent.api_json(&format!("/v1/vms/{id}"))?;
        if row["power"] == "stopped" {
            Ok(())
        } else {
            Err(row.to_string())
        }
    });

    // bob's VM by URL is not found, exactly as a VM that does not exist.
    browser.goto(&format!("{base}/panel/vms/{bob_vm}"));
    let text = browser.text("body").unwrap();
    assert!(text.contains("No such VM"), "{text}");
    assert!(!text.contains("bob"), "{text}");
    browser.goto(&format!("{base}/panel/vms/vm-does-not-exist"));
    let missing = browser.text("body").unwrap();
    assert_eq!(
        text.replace(&bob_vm, "ID"),
        missing.replace("vm-does-not-exist", "ID")
    );
    // Nor are the admin pages open to her.
    browser.goto(&format!("{base}/admin/drift"));
    assert!(browser.text("body").unwrap().contains("Admins only"));
    browser.click("nav button");

    // The admin sees the drift entry and clicks fix: the intruder is stopped.
    login(&browser, &base, "ann", "ann's long password");
    browser.wait_for_text(&format!("{base}/admin/drift"), "vm-999", BOOT);
    browser.screenshot(&shot("admin-drift"));
    browser.click("#drift button");
    assert!(flash(&browser).contains("asked"), "{}", flash(&browser));
    eventually("the foreign QEMU stopped", BOOT, || {
        match intruder.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    });

    // Every member's VMs, the services with the failing one, the events and the audit log.
    browser.goto(&format!("{base}/admin/vms"));
    let all = browser.text("#vms").unwrap();
    assert!(
        all.contains("web1") && browser.find("#vm-b1").is_ok(),
        "every member's VMs: {all}"
    );
    browser.screenshot(&shot("admin-vms"));
    // The capacity meters count both members' VMs (one vCPU each, of 4) against the worker.
    browser.goto(&format!("{base}/admin"));
    let meters = browser.script("return document.querySelector('#capacity-n1').textContent");
    assert!(
        meters.as_str().is_some_and(|m| m.contains("vCPU: 2 of 4")),
        "{meters}"
    );
    browser.screenshot(&shot("admin-nodes"));
    browser.wait_for_text(&format!("{base}/admin/services"), "failing", PAGE);
    browser.goto(&format!("{base}/admin/audit"));
    let audit = browser.text("#audit").unwrap();
    assert!(
        audit.contains("alice") && audit.contains("POST /v1/vms"),
        "{audit}"
    );
    browser.goto(&format!("{base}/admin/events"));
    assert!(browser.find("h1").is_ok());

    // An announcement to every member who owns a VM, through the SMTP sink.
    browser.goto(&format!("{base}/admin/announce"));
    browser.fill("#subject", "Maintenance on Sunday");
    browser.fill("#message", "The hosts reboot at 10:00 UTC.\n.\nThanks!");
    browser.click("#send");
    assert_eq!(flash(&browser), "Sent to 2 member(s).");
    let mails = eventually("two mails in the sink", PAGE, || {
        let mails = sink.mails();
        if mails.len() == 2 {
            Ok(mails)
        } else {
            Err(format!("{mails:?}"))
        }
    });
    let mut to: Vec<_> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["alice@coop.test", "bob@coop.test"]);
    for mail in &mails {
        assert_eq!(mail.from, "noreply@coop.test");
        assert!(
            mail.data.contains("Subject: Maintenance on Sunday"),
            "{}",
            mail.data
        );
        assert!(
            mail.data.contains("The hosts reboot at 10:00 UTC."),
            "{}",
            mail.data
        );
    }

    // The admin deletes bob's VM from its page (the button sits behind a disclosure).
    browser.goto(&format!("{base}/panel/vms/{bob_vm}"));
    browser.script("document.querySelector('details').open = true; return true");
    browser.click("form[action$='/delete'] button");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());
    assert_eq!(flash(&browser), "The VM is being deleted.");
    eventually("bob's VM gone", BOOT, || {
        match agent.http_get(&format!("/v1/vms/{bob_vm}"), true)? {
            (404, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    });

    // The public status page shows the failing service, without a login: today's uptime bar
    // is red, and the incident posted is on the timeline.
    agent.cli(&[
        "notice",
        "post",
        "www-down",
        "--title",
        "The web site is down",
    ]);
    browser.delete_cookies();
    let status = browser.wait_for_text(&format!("{base}/status"), "down", PAGE);
    assert!(status.contains("www"), "{status}");
    let today = eventually("today's bar is drawn red", PAGE, || {
        browser.goto(&format!("{base}/status"));
        let fill = browser.script(
            "const bars = document.querySelectorAll('#uptime-www rect'); \
             return bars.length + ' ' + bars[bars.length - 1].getAttribute('fill')",
        );
        match fill.as_str() {
            Some(f) if f == "90 #b9312c" => Ok(f.to_owned()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(today, "90 #b9312c");
    // The pictures take the page's width and a visible height, on a desktop and on a phone.
    for (width, height) in [(1100, 900), (390, 844)] {
        browser.resize(width, height);
        let size = browser.script(
            "const b = document.querySelector('#uptime-www').getBoundingClientRect(); \
             const t = document.querySelector('#timeline').getBoundingClientRect(); \
             return [b.width, b.height, t.width, t.height, document.body.clientWidth]",
        );
        let n = |i: usize| size[i].as_f64().unwrap_or(0.0);
        assert!(n(0) > n(4) * 0.8 && n(1) >= 5.0, "uptime bars {size}");
        assert!(n(2) > n(4) * 0.8 && n(3) >= 5.0, "timeline {size}");
        assert!(n(0) <= n(4) + 1.0, "no horizontal overflow: {size}");
    }
    assert!(
        browser
            .text("#timeline")
            .is_ok_and(|t| t.contains("The web site is down")),
        "{}",
        browser.source()
    );
    browser.resize(1100, 900);
    browser.screenshot(&shot("status"));

    let _ = intruder.kill();
    let _ = intruder.wait();
}

/// A request without a browser: (status, Set-Cookie values, Location, body).
fn web(
    agent: &TestAgent,
    method: &str,
    path: &str,
    cookies: &[(&str, &str)],
    form: &[(&str, &str)],
) -> (u16, Vec<String>, String, String) {
    let agent_http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let url = format!("http://{}{path}", agent.api_addr());
    let cookie = cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let response = if method == "GET" {
        agent_http.get(&url).header("Cookie", &cookie).call()
    } else {
        agent_http
            .post(&url)
            .header("Cookie", &cookie)
            .send_form(form.iter().copied())
    };
    let mut response = response.expect("an answer");
    let set: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, set, location, body)
}

fn cookie_value(set: &[String], name: &str) -> Option<String> {
    set.iter()
        .find_map(|c| c.strip_prefix(&format!("{name}="))?.split(';').next())
        .map(str::to_owned)
}

fn csrf_in(body: &str) -> String {
    body.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field")
        .to_owned()
}

#[test]
fn sessions_need_csrf_tokens_are_rate_limited_and_end_at_logout() {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.extra = "[state]\nbootstrap_expect = 1\n".into();
    });
    let agent = &cluster.agents[0];
    eventually("a leader", BOOT, || {
        let state = agent.state()?;
        if state["leader"].is_string() {
            Ok(())
        } else {
            Err(state.to_string())
        }
    });
    create_admin(agent, "ann", "ann's long password");

    // The panel may not be framed, runs no script and loads nothing from elsewhere.
    let response = ureq::get(format!("http://{}/login", agent.api_addr()))
        .call()
        .expect("the login page");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-frame-options"), "DENY");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && csp.contains("style-src 'sha256-"),
        "{csp}"
    );

    // The login form sets its double-submit cookie; a post without it is refused.
    let (status, set, _, body) = web(agent, "GET", "/login", &[], &[]);
    assert_eq!(status, 200);
    let login_cookie = cookie_value(&set, "hearth_login").expect("a login cookie");
    assert_eq!(csrf_in(&body), login_cookie);
    let good = [
        ("name", "ann"),
        ("password", "ann's long password"),
        ("csrf", login_cookie.as_str()),
    ];
    let (status, ..) = web(agent, "POST", "/login", &[], &good);
    assert_eq!(status, 403, "no login cookie, no login");

    // A right password opens a session; its cookie is Secure, HttpOnly, SameSite=Strict.
    let (status, set, location, _) = web(
        agent,
        "POST",
        "/login",
        &[("hearth_login", &login_cookie)],
        &good,
    );
    assert_eq!((status, location.as_str()), (303, "/admin"), "{set:?}");
    let line = set
        .iter()
        .find(|c| c.starts_with("hearth_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(line.contains(flag), "{line}");
    }
    let session = cookie_value(&set, "hearth_session").unwrap();
    let (status, _, _, page) = web(
        agent,
        "GET",
        "/admin/members",
        &[("hearth_session", &session)],
        &[],
    );
    assert_eq!(status, 200);
    let csrf = csrf_in(&page);

    // A form without the session's CSRF token changes nothing.
    let member = [
        ("name", "mallory"),
        ("role", "admin"),
        ("password", "0123456789abc"),
    ];
    let mut forged = member.to_vec();
    forged.push(("csrf", "0000"));
    let (status, ..) = web(
        agent,
        "POST",
        "/admin/members",
        &[("hearth_session", &session)],
        &forged,
    );
    assert_eq!(status, 403);
    let accounts = agent.api_json("/v1/accounts").unwrap();
    assert!(!accounts.to_string().contains("mallory"), "{accounts}");
    // With it, the change is made and audited as ann.
    let mut signed = member.to_vec();
    signed.push(("csrf", csrf.as_str()));
    let (status, _, location, _) = web(
        agent,
        "POST",
        "/admin/members",
        &[("hearth_session", &session)],
        &signed,
    );
    assert_eq!((status, location.as_str()), (303, "/admin/members"));
    eventually("mallory's account and its audit entry", PAGE, || {
        let audit = agent.api_json("/v1/audit")?;
        let by_ann = audit
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["who"] == "ann" && e["path"] == "/v1/accounts");
        if by_ann
            && agent
                .api_json("/v1/accounts")?
                .to_string()
                .contains("mallory")
        {
            Ok(())
        } else {
            Err(audit.to_string())
        }
    });

    // Five wrong passwords, then even the right one waits.
    for _ in 0..5 {
        let wrong = [
            ("name", "ann"),
            ("password", "not the password"),
            ("csrf", login_cookie.as_str()),
        ];
        let (status, ..) = web(
            agent,
            "POST",
            "/login",
            &[("hearth_login", &login_cookie)],
            &wrong,
        );
        assert_eq!(status, 401);
    }
    let (status, _, _, body) = web(
        agent,
        "POST",
        "/login",
        &[("hearth_login", &login_cookie)],
        &good,
    );
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too many failed logins"), "{body}");

    // Logout ends the session on the server: the old cookie no longer works.
    let (status, _, location, _) = web(
        agent,
        "POST",
        "/logout",
        &[("hearth_session", &session)],
        &[("csrf", csrf.as_str())],
    );
    assert_eq!((status, location.as_str()), (303, "/login"));
    eventually("the session revoked", PAGE, || {
        let (status, _, location, _) =
            web(agent, "GET", "/admin", &[("hearth_session", &session)], &[]);
        if (status, location.as_str()) == (303, "/login") {
            Ok(())
        } else {
            Err(format!("{status} {location}"))
        }
    });
    let tokens = agent.api_json("/v1/tokens").unwrap();
    assert!(
        !tokens.to_string().contains("web session"),
        "a logged-out session leaves no token behind: {tokens}"
    );
}
