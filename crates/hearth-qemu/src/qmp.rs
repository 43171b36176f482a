//! A minimal QMP client over a unix socket: the greeting, capability negotiation, then one
//! command at a time, skipping the asynchronous events QEMU interleaves.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one exchange may take before the client gives up.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line QEMU may send; a longer one is a protocol error, not an allocation.
const MAX_LINE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: not JSON: {0}")]
    Json(String),
    #[error("QMP: {class}: {desc}")]
    Command { class: String, desc: String },
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout(TIMEOUT))?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        // An event QEMU emitted as the previous client hung up can still be queued on the
        // monitor, and arrives before the new session's greeting: skipped (seen with a
        // mirror job's `JOB_STATUS_CHANGE` while a live move polled its progress).
        let mut greeting = qmp.read_message().await?;
        for _ in 0..64 {
            if greeting.get("event").is_none() {
                break;
            }
            greeting = qmp.read_message().await?;
        }
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Json(format!(
                "expected the greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        tokio::time::timeout(TIMEOUT, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| QmpError::Timeout(TIMEOUT))??;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(QmpError::Command {
                    class: error["class"].as_str().unwrap_or("Error").to_owned(),
                    desc: error["desc"].as_str().unwrap_or("").to_owned(),
                });
            }
            return Err(QmpError::Json(format!("unexpected message {message}")));
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = tokio::time::timeout(TIMEOUT, async {
            loop {
                let before = line.len();
                let n = (&mut self.reader)
                    .take((MAX_LINE - before) as u64 + 1)
                    .read_line(&mut line)
                    .await?;
                if n == 0 || line.ends_with('\n') || line.len() > MAX_LINE {
                    return Ok::<usize, std::io::Error>(line.len());
                }
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(TIMEOUT))??;
        if read == 0 {
            return Err(QmpError::Closed);
        }
        if line.len() > MAX_LINE {
            return Err(QmpError::Json(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_str(line.trim_end()).map_err(|e| QmpError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP server: greeting, then for each expected command its reply lines.
    async fn serve(
        listener: UnixListener,
        replies: Vec<(&'static str, Vec<String>)>,
    ) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for (command, reply) in replies {
            let line = lines.next_line().await.unwrap().unwrap();
            let request: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(request["execute"], command);
            seen.push(request);
            for r in reply {
                write.write_all(r.as_bytes()).await.unwrap();
                write.write_all(b"\n").await.unwrap();
            }
        }
        seen
    }

    #[tokio::test]
    async fn commands_skip_events_and_errors_carry_the_description() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve(
            listener,
            vec![
                ("qmp_capabilities", vec!["{\"return\": {}}".into()]),
                (
                    "query-status",
                    vec![
                        "{\"event\": \"RESUME\", \"timestamp\": {}}".into(),
                        "{\"return\": {\"status\": \"running\", \"running\": true}}".into(),
                    ],
                ),
                (
                    "block_set_io_throttle",
                    vec!["{\"error\": {\"class\": \"GenericError\", \"desc\": \"Device 'x' not found\"}}".into()],
                ),
            ],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        let error = qmp
            .execute("block_set_io_throttle", Some(json!({"id": "x"})))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "QMP: GenericError: Device 'x' not found");
        let seen = server.await.unwrap();
        assert_eq!(seen[2]["arguments"]["id"], "x");
    }

    #[tokio::test]
    async fn an_event_left_from_the_previous_session_before_the_greeting_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let stale = "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"ready\"}}\n";
            write.write_all(stale.as_bytes()).await.unwrap();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(read).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            write.write_all(b"{\"return\": {}}\n").await.unwrap();
            // Held open until the client is done.
            let _ = lines.next_line().await;
        });
        assert!(Qmp::connect(&path).await.is_ok());
    }

    #[tokio::test]
    async fn a_closed_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        assert!(matches!(Qmp::connect(&path).await, Err(QmpError::Closed)));
    }
}
