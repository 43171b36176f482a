//! A small W3C WebDriver client driving real headless Chromium through Debian's
//! `chromedriver`: start the driver on a loopback port, open a session, navigate, find, type,
//! click, read text, take screenshots. The driver (and the browser it started) is ended on
//! drop, by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::{TempDir, eventually};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: TempDir,
}

/// Where the browser and its driver are, Debian's paths by default.
fn program(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and a window of
    /// `width`×`height`. Panics, naming the package, when either is missing.
    pub fn start(width: u32, height: u32) -> Browser {
        let driver_bin = program("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = program("CHROMIUM", "/usr/bin/chromium");
        for (path, package) in [(&driver_bin, "chromium-driver"), (&chromium, "chromium")] {
            assert!(
                path.is_file(),
                "{} is missing: apt-get install {package} (scripts/test.sh does)",
                path.display()
            );
        }
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let profile = TempDir::new("chromium");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        eventually("chromedriver ready", Duration::from_secs(30), || {
            let status = browser.raw("GET", "/status", None)?;
            if status["value"]["ready"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ]
            }
        }}});
        let created = browser
            .raw("POST", "/session", Some(capabilities))
            .expect("a WebDriver session");
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {created}"))
            .to_owned();
        browser
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            (_, Some(body)) => agent.post(&url).send_json(&body),
            (_, None) => agent.post(&url).send_json(json!({})),
        };
        let mut response = response.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let value: Value = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("{method} {path}: {status} {value}"))
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .map(|v| v["value"].clone())
    }

    /// Logs in on the panel at `base` as `name` (the browser's other cookies gone first).
    pub fn log_in(&self, base: &str, name: &str, password: &str) {
        self.delete_cookies();
        self.goto(&format!("{base}/login"));
        self.fill("#name", name);
        self.fill("#password", password);
        self.click("#login");
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The element matching `css`, if there is one now.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{css}: {found}"))
    }

    /// Types `text` into the element matching `css`, after clearing it.
    pub fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).unwrap_or_else(|e| panic!("{e}"));
        let _ = self.call("POST", &format!("/element/{element}/clear"), None);
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Chooses `value` in the `<select>` matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        let option = format!("{css} option[value=\"{value}\"]");
        let by_value = self.find(&option);
        let element = match by_value {
            Ok(element) => element,
            Err(_) => {
                let options = self
                    .call(
                        "POST",
                        "/elements",
                        Some(json!({"using": "css selector", "value": format!("{css} option")})),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                options
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o[ELEMENT].as_str().map(str::to_owned))
                    .find(|o| self.element_text(o) == value)
                    .unwrap_or_else(|| panic!("{css} has no option {value}"))
            }
        };
        self.call("POST", &format!("/element/{element}/click"), None)
            .unwrap_or_else(|e| panic!("choose {value} in {css}: {e}"));
    }

    /// Clicks the element matching `css` (a link, or a form's button) and waits until the
    /// next page has loaded: the old document is marked first, and the wait ends when the
    /// window holds a complete document without the mark.
    pub fn click(&self, css: &str) {
        let element = self.find(css).unwrap_or_else(|e| panic!("{e}"));
        self.script("window.__hearthOldPage = true; return true");
        self.call("POST", &format!("/element/{element}/click"), None)
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        eventually(
            &format!("the page after clicking {css}"),
            Duration::from_secs(60),
            || {
                let loaded = self
                    .call(
                        "POST",
                        "/execute/sync",
                        Some(json!({
                            "script": "return window.__hearthOldPage !== true && document.readyState === 'complete'",
                            "args": []
                        })),
                    )
                    .unwrap_or(Value::Bool(false));
                if loaded == true {
                    Ok(())
                } else {
                    Err(self.url())
                }
            },
        );
    }

    fn element_text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The visible text of the element matching `css`.
    pub fn text(&self, css: &str) -> Result<String, String> {
        let element = self.find(css)?;
        Ok(self.element_text(&element))
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> String {
        self.call("GET", "/source", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until the page at `url` (reloaded each try) has `needle` in its text; returns
    /// the text.
    pub fn wait_for_text(&self, url: &str, needle: &str, timeout: std::time::Duration) -> String {
        crate::eventually(&format!("{url} shows {needle:?}"), timeout, || {
            self.goto(url);
            let text = self.text("body")?;
            if text.contains(needle) {
                Ok(text)
            } else {
                Err(text)
            }
        })
    }

    /// Runs `script` in the page and returns its value.
    pub fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .unwrap_or_else(|e| panic!("script: {e}"))
    }

    /// The cookies of the current page, as WebDriver reports them (with `httpOnly`,
    /// `secure`, `sameSite`).
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    pub fn delete_cookies(&self) {
        let _ = self.call("DELETE", "/cookie", None);
    }

    /// Resizes the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) {
        let _ = self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let data = self
            .call("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or(""))
            .expect("a base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice, released for the driver to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
