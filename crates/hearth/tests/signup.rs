//! Sign-up end to end against a real agent, in real headless Chromium, with an SMTP sink
//! the test runs: with admin approval, a new member signs up, confirms the address through
//! the emailed link (once: the link does not work twice), cannot log in until an admin
//! approves, then can; resets a forgotten password through an emailed link (again once);
//! with invite codes, a wrong code is refused and a right one makes one account. The links
//! start with the co-op's public URL whatever Host a request names, and sign-up attempts
//! from one address hit the login rate limit.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::smtp::{Mail, SmtpSink};
use hearth_testkit::webdriver::Browser;
use hearth_testkit::{TestAgent, TestCluster, eventually, http_request};

const SHORT: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
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

fn done(browser: &Browser) -> String {
    browser.text("#done").unwrap_or_default()
}

/// The mails to `to` so far.
fn mails_to(sink: &SmtpSink, to: &str) -> Vec<Mail> {
    sink.mails()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t.contains(to)))
        .collect()
}

/// Waits for mail number `n` (from 1) to `to` and returns the link in it that starts with
/// `prefix`.
fn link_in_mail(sink: &SmtpSink, to: &str, n: usize, prefix: &str) -> String {
    let mail = eventually(&format!("mail {n} to {to}"), SHORT, || {
        let mails = mails_to(sink, to);
        mails
            .get(n - 1)
            .cloned()
            .ok_or_else(|| format!("{} mails", mails.len()))
    });
    let body = mail.body();
    body.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no link starting with {prefix} in {body}"))
        .trim()
        .to_owned()
}

fn sign_up(browser: &Browser, base: &str, name: &str, invite: Option<&str>) -> String {
    browser.goto(&format!("{base}/signup"));
    browser.fill("#name", name);
    browser.fill("#email", &format!("{name}@coop.test"));
    browser.fill("#password", &format!("{name}'s long password"));
    if let Some(code) = invite {
        browser.fill("#invite", code);
    }
    browser.click("#signup");
    browser.text("body").unwrap_or_default()
}

/// Opens an emailed verification link and presses its button; the page's text.
fn confirm(browser: &Browser, link: &str) -> String {
    browser.goto(link);
    browser.click("#confirm");
    browser.text("body").unwrap_or_default()
}

/// Sets the sign-up mode, once the agent's state has formed.
fn set_mode(agent: &TestAgent, mode: &str, base: &str) {
    eventually(&format!("sign-up {mode}"), SHORT, || {
        let args = ["signup", "set", "--mode", mode, "--public-url", base];
        match agent.cli_result(&args) {
            (Some(0), _, _) => Ok(()),
            (_, _, stderr) => Err(stderr),
        }
    });
}

fn start(sink: &SmtpSink) -> TestCluster {
    let smtp = format!(
        "[smtp]\nserver = \"{}\"\nfrom = \"Test co-op <noreply@coop.test>\"\n",
        sink.addr()
    );
    TestCluster::start_with(bin(), 1, move |spec| {
        spec.extra = format!("[state]\nbootstrap_expect = 1\n{smtp}");
    })
}

#[test]
fn a_new_member_signs_up_confirms_is_approved_and_resets_a_password() {
    let sink = SmtpSink::start(std::net::Ipv4Addr::LOCALHOST);
    let cluster = start(&sink);
    let agent = &cluster.agents[0];
    let base = format!("http://{}", agent.api_addr());
    let browser = Browser::start(1000, 800);

    // Closed by default.
    browser.goto(&format!("{base}/signup"));
    assert!(browser.find("#closed").is_ok(), "{}", browser.source());
    set_mode(agent, "approval", &base);

    // Mia signs up from the login page's link and gets a link by email.
    browser.goto(&format!("{base}/login"));
    browser.click("#signup-link");
    let page = sign_up(&browser, &base, "mia", None);
    assert!(page.contains("We sent a link to mia@coop.test"), "{page}");
    let verify = link_in_mail(&sink, "mia@coop.test", 1, &format!("{base}/verify?token="));
    login(&browser, &base, "mia", "mia's long password");
    assert!(
        flash(&browser).contains("Confirm your email"),
        "{}",
        flash(&browser)
    );

    // The link works once.
    let page = confirm(&browser, &verify);
    assert!(page.contains("An admin approves new accounts"), "{page}");
    let again = confirm(&browser, &verify);
    assert!(again.contains("already used"), "{again}");

    // Not approved yet: the right password does not open a session.
    login(&browser, &base, "mia", "mia's long password");
    assert!(
        flash(&browser).contains("not approved"),
        "{}",
        flash(&browser)
    );
    let shown = agent.cli(&["signup", "show"]);
    assert!(shown.contains("awaiting approval: mia"), "{shown}");
    // An admin approves her from the members page.
    agent.ensure_account("ann");
    login(&browser, &base, "ann", "ann's test password");
    browser.goto(&format!("{base}/admin/members"));
    let row = browser.text("#account-mia").unwrap();
    assert!(row.contains("awaiting approval"), "{row}");
    browser.click("#account-mia form[action$='/approve'] button");
    assert!(
        flash(&browser).contains("mia approved"),
        "{}",
        flash(&browser)
    );
    browser.click("nav button");
    let opened = link_in_mail(&sink, "mia@coop.test", 2, &format!("{base}/login"));
    assert_eq!(opened, format!("{base}/login"));
    login(&browser, &base, "mia", "mia's long password");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());
    browser.click("nav button");

    // She forgets her password: the reset link comes by email, works once.
    browser.click("#forgot");
    browser.fill("#who", "mia@coop.test");
    browser.click("#send-reset");
    assert!(done(&browser).contains("If an account has that name"));
    let reset = link_in_mail(
        &sink,
        "mia@coop.test",
        3,
        &format!("{base}/reset/confirm?token="),
    );
    browser.goto(&reset);
    browser.fill("#password", "mia's new long password");
    browser.click("#set-password");
    assert!(
        done(&browser).contains("Your new password works"),
        "{}",
        browser.source()
    );
    browser.goto(&reset);
    browser.fill("#password", "mia's third long password");
    browser.click("#set-password");
    assert!(
        done(&browser).contains("already used"),
        "{}",
        browser.source()
    );
    login(&browser, &base, "mia", "mia's long password");
    assert!(flash(&browser).contains("Wrong"), "{}", flash(&browser));
    login(&browser, &base, "mia", "mia's new long password");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());

    // A reset for nobody looks the same and sends nothing; a forged Host does not change
    // where the link points.
    let before = sink.mails().len();
    let (status, body) = post_form(agent, "evil.example", "/reset", "who=nobody");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("If an account has that name"), "{body}");
    let (status, _) = post_form(agent, "evil.example", "/reset", "who=mia");
    assert_eq!(status, 200);
    let forged = link_in_mail(&sink, "mia@coop.test", 4, "http");
    assert!(
        forged.starts_with(&format!("{base}/reset/confirm?token=")),
        "{forged}"
    );
    assert_eq!(sink.mails().len(), before + 1, "a mail for mia only");
}

/// POSTs a form to `path` with `Host: host`, with a double-submit value the test makes.
fn post_form(agent: &TestAgent, host: &str, path: &str, fields: &str) -> (u16, String) {
    let csrf = "x".repeat(24);
    let body = format!("{fields}&csrf={csrf}");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nCookie: hearth_login={csrf}\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_request(agent.api_addr(), &request).unwrap()
}

#[test]
fn an_invite_code_makes_one_account_and_attempts_are_rate_limited() {
    let sink = SmtpSink::start(std::net::Ipv4Addr::LOCALHOST);
    let cluster = start(&sink);
    let agent = &cluster.agents[0];
    let base = format!("http://{}", agent.api_addr());
    set_mode(agent, "invite", &base);
    let code = agent
        .cli(&["signup", "invite", "create", "--note", "for max"])
        .trim()
        .to_owned();
    let listed = agent.cli(&["signup", "invite", "list"]);
    assert!(
        listed.contains("for max") && !listed.contains(&code),
        "{listed}"
    );
    let browser = Browser::start(1000, 800);

    let page = sign_up(&browser, &base, "max", Some("not-the-code"));
    assert!(
        page.contains("the code is wrong, used or expired"),
        "{page}"
    );
    let page = sign_up(&browser, &base, "max", Some(&code));
    assert!(page.contains("We sent a link"), "{page}");
    let verify = link_in_mail(&sink, "max@coop.test", 1, &format!("{base}/verify?token="));
    let page = confirm(&browser, &verify);
    assert!(page.contains("You can log in now"), "{page}");
    login(&browser, &base, "max", "max's long password");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());
    browser.click("nav button");
    let page = sign_up(&browser, &base, "zed", Some(&code));
    assert!(
        page.contains("the code is wrong, used or expired"),
        "{page}"
    );
    let listed = agent.cli(&["signup", "invite", "list"]);
    assert!(listed.contains("max"), "used by max: {listed}");

    // Sign-up attempts from one address count against the login rate limit.
    let limited = (0..10).find_map(|i| {
        let fields =
            format!("name=spam{i}&email=spam{i}%40coop.test&password=a+long+password&invite=x");
        let (status, body) = post_form(agent, &agent.api_addr().to_string(), "/signup", &fields);
        (status == 429).then_some(body)
    });
    let body = limited.expect("no 429 within 10 attempts");
    assert!(body.contains("Too many attempts"), "{body}");

    // Closed again: no form.
    set_mode(agent, "closed", "");
    browser.goto(&format!("{base}/signup"));
    assert!(browser.find("#closed").is_ok(), "{}", browser.source());
}
