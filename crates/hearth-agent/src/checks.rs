//! Health checks of this node's service instances (`http`, `tcp`, `exec`), debounced by
//! rise/fall thresholds, feeding the node's announcement.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;

use hearth_membership::Membership;
use hearth_types::{CheckStatus, ServiceInstance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckConfig, HttpTarget};

/// Rise/fall debouncing: the status only flips after enough results in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debounce {
    pub status: CheckStatus,
    streak: u32,
    last_passed: Option<bool>,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            status: CheckStatus::Unknown,
            streak: 0,
            last_passed: None,
        }
    }
}

impl Debounce {
    /// Feeds one check result; returns the (possibly new) status.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> CheckStatus {
        if self.last_passed == Some(passed) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 1;
            self.last_passed = Some(passed);
        }
        match (passed, self.status) {
            (true, CheckStatus::Passing) | (false, CheckStatus::Failing) => {}
            (true, _) if self.streak >= rise => self.status = CheckStatus::Passing,
            (false, _) if self.streak >= fall => self.status = CheckStatus::Failing,
            _ => {}
        }
        self.status
    }
}

/// Runs one check once. Timeouts count as failures.
pub async fn run_check(check: &CheckConfig) -> bool {
    let attempt = async {
        if let Some(url) = &check.http {
            http_check(url).await
        } else if let Some(addr) = &check.tcp {
            TcpStream::connect(addr.as_str()).await.is_ok()
        } else if let Some(argv) = &check.exec {
            exec_check(argv).await
        } else {
            true
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_check(url: &str) -> bool {
    let Some(target) = HttpTarget::parse(url) else {
        return false;
    };
    let connect = match target.host.parse::<IpAddr>() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, target.port)).await,
        Err(_) => TcpStream::connect((target.host.as_str(), target.port)).await,
    };
    let Ok(mut stream) = connect else {
        return false;
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hearth-check\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
    }
    let status = std::str::from_utf8(&head[..len])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    matches!(status, Some(200..=299))
}

async fn exec_check(argv: &[String]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(mut child) => child.wait().await.is_ok_and(|status| status.success()),
        Err(_) => false,
    }
}

/// The current status of this node's instances by service name, shared by the check loops
/// and the supervisor.
pub type Instances = Arc<Mutex<BTreeMap<String, ServiceInstance>>>;

/// Runs one service's check forever (until `stop`), publishing each status change.
pub async fn check_loop(
    service: String,
    check: CheckConfig,
    instances: Instances,
    membership: Membership,
    stop: CancellationToken,
) {
    let mut debounce = Debounce::default();
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let passed = tokio::select! {
            _ = stop.cancelled() => return,
            passed = run_check(&check) => passed,
        };
        let status = debounce.observe(passed, check.rise, check.fall);
        publish(&instances, &membership, &service, status).await;
    }
}

async fn publish(
    instances: &Instances,
    membership: &Membership,
    service: &str,
    status: CheckStatus,
) {
    // The lock is held across the send so that snapshots reach membership in order.
    let mut guard = instances.lock().await;
    let Some(instance) = guard.get_mut(service) else {
        return;
    };
    if instance.status == status {
        return;
    }
    tracing::info!(%service, %status, "check status changed");
    instance.status = status;
    membership
        .set_services(guard.values().cloned().collect())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rise_and_fall_debounce_flaps() {
        let mut d = Debounce::default();
        assert_eq!(d.observe(true, 2, 3), CheckStatus::Unknown);
        assert_eq!(d.observe(true, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(false, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(false, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(true, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(false, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(false, 2, 3), CheckStatus::Passing);
        assert_eq!(d.observe(false, 2, 3), CheckStatus::Failing);
        assert_eq!(d.observe(true, 2, 3), CheckStatus::Failing);
        assert_eq!(d.observe(true, 2, 3), CheckStatus::Passing);
    }

    #[test]
    fn a_new_failing_instance_fails_after_fall() {
        let mut d = Debounce::default();
        assert_eq!(d.observe(false, 1, 2), CheckStatus::Unknown);
        assert_eq!(d.observe(false, 1, 2), CheckStatus::Failing);
    }

    fn check(kind: &str, target: &str) -> CheckConfig {
        let mut c = CheckConfig {
            http: None,
            tcp: None,
            exec: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
        };
        match kind {
            "http" => c.http = Some(target.into()),
            "tcp" => c.tcp = Some(target.into()),
            _ => c.exec = Some(target.split(' ').map(String::from).collect()),
        }
        c
    }

    #[tokio::test]
    async fn tcp_and_http_checks_see_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for reply in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 503 Busy\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/healthz");
        assert!(run_check(&check("http", &url)).await);
        assert!(!run_check(&check("http", &url)).await);
        server.await.unwrap();
        // Nothing listens there any more.
        assert!(!run_check(&check("tcp", &addr.to_string())).await);
    }

    #[tokio::test]
    async fn exec_checks_use_the_exit_code() {
        assert!(run_check(&check("exec", "true")).await);
        assert!(!run_check(&check("exec", "false")).await);
        assert!(!run_check(&check("exec", "/nonexistent/program")).await);
        let mut slow = check("exec", "sleep 5");
        slow.timeout = Duration::from_millis(100);
        assert!(!run_check(&slow).await);
    }
}
