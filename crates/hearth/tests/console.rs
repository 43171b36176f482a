//! Interactive serial consoles against real agents and real QEMU guests (the test guest runs
//! a busybox shell on ttyS0): `hearth vm console NAME --interactive` types into a guest on
//! another node through a server's API, a second attachment watches and cannot type until
//! the first detaches with Ctrl-], everything stays in the console log, and the session ends
//! when the VM stops. In real headless Chromium, a member types into their VM's terminal
//! page; another member cannot open it, and another site's page cannot open its socket.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_testkit::vms::{BOOT, console, create_tiny, wait_for_hosts, wait_phase};
use hearth_testkit::webdriver::Browser;
use hearth_testkit::{TestAgent, TestCluster, eventually};

const SHORT: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// Collects what a child writes to one of its pipes.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buffer
}

/// `hearth vm console VM --interactive` with its three pipes; killed when dropped.
struct Attached {
    child: Child,
    stdin: ChildStdin,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Attached {
    fn start(api: &TestAgent, vm: &str) -> Attached {
        let mut child = Command::new(bin())
            .args(["vm", "console", vm, "--interactive"])
            .arg(format!("--api={}", api.api_addr()))
            .arg(format!("--token={}", api.token()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hearth vm console");
        let stdin = child.stdin.take().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Attached {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn send(&mut self, keys: &str) {
        self.stdin.write_all(keys.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal showed `needle` (the guest's output) or said it on stderr
    /// (the CLI's own lines).
    fn wait_for(&self, needle: &str, on_stderr: bool) {
        eventually(&format!("`{needle}` on the terminal"), SHORT, || {
            let text = if on_stderr {
                self.stderr()
            } else {
                self.stdout()
            };
            if text.contains(needle) {
                Ok(())
            } else {
                Err(format!(
                    "stdout: {}\nstderr: {}",
                    self.stdout(),
                    self.stderr()
                ))
            }
        });
    }

    fn wait_exit(&mut self) -> Option<i32> {
        eventually("the console command to exit", SHORT, || {
            match self.child.try_wait() {
                Ok(Some(status)) => Ok(status.code()),
                _ => Err(self.stderr()),
            }
        })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_terminal_types_through_another_nodes_api_while_others_watch() {
    // n1 serves the API and the state; n2, a worker, runs the VM.
    let cluster = TestCluster::start_with(bin(), 2, |spec| {
        if spec.name == "n1" {
            spec.roles = "[\"server\"]".into();
            spec.extra = "[state]\nbootstrap_expect = 1\n".into();
        } else {
            spec.roles = "[\"worker\"]".into();
            spec.extra = "[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
        }
    });
    let (api, host) = (&cluster.agents[0], &cluster.agents[1]);
    wait_for_hosts(api, 1);
    api.add_test_guest(&hearth_testkit::test_guest());
    let out = create_tiny(api, "web1", &[]);
    assert!(out.contains("placed on n2"), "{out}");
    let row = wait_phase(api, "web1", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    eventually("the guest's shell", BOOT, || {
        let text = console(host, &id);
        match text.contains("HEARTH-GUEST-READY") {
            true => Ok(()),
            false => Err(text),
        }
    });

    // A plain GET is not a WebSocket.
    let (status, body) = api.http_get("/v1/vms/web1/console/attach", true).unwrap();
    assert_eq!(status, 426, "{body}");

    // The first attachment holds the keyboard: what it types runs in the guest, and the
    // answer comes back to it and into the console log on the host.
    let mut first = Attached::start(api, "web1");
    first.wait_for("you hold the keyboard", true);
    first.send("\recho HEARTH-$((40+2))\r");
    first.wait_for("HEARTH-42", false);
    eventually("the answer in the console log", SHORT, || {
        let text = console(host, &id);
        match text.contains("HEARTH-42") {
            true => Ok(()),
            false => Err(text),
        }
    });

    // A second one watches: its keys are dropped while the first holds the keyboard, and
    // it sees what the first one's commands print.
    let mut second = Attached::start(api, "web1");
    second.wait_for("root is typing; you are watching", true);
    second.send("echo SECOND-$((1+1))\r");
    first.send("echo FIRST-$((2+3))\r");
    second.wait_for("FIRST-5", false);
    first.wait_for("FIRST-5", false);
    assert!(!console(host, &id).contains("SECOND-2"), "a watcher typed");

    // Ctrl-] detaches the first; the second takes the keyboard by typing.
    first.send("\x1d");
    assert_eq!(first.wait_exit(), Some(0), "{}", first.stderr());
    assert!(first.stderr().contains("detached"), "{}", first.stderr());
    second.wait_for("nobody is typing", true);
    second.send("echo THIRD-$((3+3))\r");
    second.wait_for("THIRD-6", false);
    second.wait_for("you hold the keyboard", true);

    // The VM stops: the session ends, saying why, and a new one is refused with a reason.
    api.cli(&["vm", "stop", "web1"]);
    assert_eq!(second.wait_exit(), Some(1), "{}", second.stderr());
    assert!(
        second.stderr().contains("the console closed"),
        "{}",
        second.stderr()
    );
    wait_phase(api, "web1", "stopped");
    let (code, _, stderr) = api.cli_result(&["vm", "console", "web1", "--interactive"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no console to attach to"), "{stderr}");
}

fn login(browser: &Browser, base: &str, name: &str, password: &str) {
    browser.goto(&format!("{base}/login"));
    browser.fill("#name", name);
    browser.fill("#password", password);
    browser.click("#login");
}

/// Waits until the terminal page's status line says `needle`.
fn wait_status(browser: &Browser, needle: &str) {
    eventually(&format!("the terminal status `{needle}`"), SHORT, || {
        let status = browser.text("#terminal-status")?;
        match status.contains(needle) {
            true => Ok(()),
            false => Err(status),
        }
    });
}

#[test]
fn a_member_types_into_their_vms_terminal_in_a_real_browser() {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    agent.add_test_guest(&hearth_testkit::test_guest());
    for member in ["mia", "max"] {
        let body = format!(
            r#"{{"name":"{member}","role":"member","password":"{member}'s long password"}}"#
        );
        let (status, answer) = agent.http_send("POST", "/v1/accounts", &body).unwrap();
        assert!(matches!(status, 200 | 201), "{status} {answer}");
    }
    agent.cli(&[
        "vm",
        "create",
        "box1",
        "--image",
        "tiny",
        "--owner",
        "mia",
        "--memory-mib",
        "256",
        "--disk-gib",
        "1",
    ]);
    let row = wait_phase(agent, "box1", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    eventually("the guest's shell", BOOT, || {
        let text = console(agent, &id);
        match text.contains("HEARTH-GUEST-READY") {
            true => Ok(()),
            false => Err(text),
        }
    });
    let base = format!("http://{}", agent.api_addr());
    let browser = Browser::start(1100, 900);

    // The member opens the terminal from the VM's page and types a command.
    login(&browser, &base, "mia", "mia's long password");
    browser.goto(&format!("{base}/panel/vms/{id}"));
    browser.click("#open-terminal");
    assert!(browser.url().ends_with("/terminal"), "{}", browser.url());
    wait_status(&browser, "You hold the keyboard");
    browser.fill(".xterm-helper-textarea", "\necho HEARTH-$((40+2))\n");
    let screen = eventually("the answer on the terminal", SHORT, || {
        let rows = browser.text(".xterm-rows")?;
        match rows.contains("HEARTH-42") {
            true => Ok(rows),
            false => Err(rows),
        }
    });
    assert!(screen.contains("echo HEARTH-$((40+2))"), "{screen}");
    assert!(console(agent, &id).contains("HEARTH-42"));
    let cookie = browser
        .cookies()
        .iter()
        .find(|c| c["name"] == "hearth_session")
        .and_then(|c| c["value"].as_str().map(str::to_owned))
        .expect("a session cookie");

    // Another site's page cannot open the socket with the member's cookie.
    let upgrade = |origin: &str| {
        let request = format!(
            "GET /panel/vms/{id}/terminal/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
Cookie: hearth_session={cookie}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            host = agent.api_addr()
        );
        hearth_testkit::http_request(agent.api_addr(), &request)
    };
    let (status, body) = upgrade("http://evil.example").unwrap();
    assert_eq!(status, 403, "{body}");

    // Another member gets no terminal of hers.
    browser.delete_cookies();
    login(&browser, &base, "max", "max's long password");
    browser.goto(&format!("{base}/panel/vms/{id}/terminal"));
    let text = browser.text("body").unwrap();
    assert!(text.contains("No such VM"), "{text}");
}
