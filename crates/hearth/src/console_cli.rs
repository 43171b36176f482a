//! `hearth vm console NAME --interactive`: the terminal attached to a VM's serial console
//! over the API's WebSocket (`GET /v1/vms/{vm}/console/attach`), in raw mode, until the
//! escape key (Ctrl-]) detaches or the console closes.

use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};
use tungstenite::{Message, WebSocket};

use crate::client::{ApiClient, ClientError};

/// The byte Ctrl-] sends: it detaches, as in telnet.
pub const ESCAPE: u8 = 0x1d;
/// How long a read of the socket waits before the keys typed meanwhile are sent.
const POLL: Duration = Duration::from_millis(20);

/// The terminal in raw mode (every key goes to the guest as typed, Ctrl-C included) until
/// dropped, which restores it.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// What the keyboard thread hands over.
enum Keys {
    Bytes(Vec<u8>),
    /// The escape key: detach.
    Detach,
}

/// Reads stdin in its own thread: keys up to the escape key. At the end of stdin (a pipe)
/// it stops reading and the session goes on, as `cat | nc` would.
fn read_keys(keys: mpsc::Sender<Keys>) {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = stdin.read(&mut buf) {
        let chunk = &buf[..n];
        let (before, detach) = match chunk.iter().position(|b| *b == ESCAPE) {
            Some(at) => (&chunk[..at], true),
            None => (chunk, false),
        };
        if !before.is_empty() && keys.send(Keys::Bytes(before.to_vec())).is_err() {
            return;
        }
        if detach {
            let _ = keys.send(Keys::Detach);
            return;
        }
    }
}

/// A line about the session on stderr, readable whether the terminal is raw or not.
fn note(text: &str) {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "\r\n[hearth: {text}]\r\n");
    let _ = stderr.flush();
}

/// What a control message from the agent says, for the user; `Err` when it closes.
fn control(text: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(why) = value.get("closed").and_then(|v| v.as_str()) {
        return Err(why.to_owned());
    }
    let you = value.get("you").and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(match value.get("writer").and_then(|v| v.as_str()) {
        _ if you => "you hold the keyboard".to_owned(),
        Some(name) => format!("{name} is typing; you are watching"),
        None => "nobody is typing; type to take the keyboard".to_owned(),
    })
}

/// Attaches this terminal to VM `vm`'s console until Ctrl-] (exit 0) or the console
/// closes (exit 1, saying why).
pub fn interactive(client: &ApiClient, vm: &str) -> Result<(), ClientError> {
    let mut socket = client.websocket(&format!("/v1/vms/{vm}/console/attach"))?;
    socket
        .get_mut()
        .set_read_timeout(Some(POLL))
        .map_err(|e| ClientError::Failed(format!("the connection: {e}")))?;
    note(&format!(
        "attached to {vm}'s console; Ctrl-] detaches (press Enter for a prompt)"
    ));
    let raw = RawMode::enter();
    let (keys, typed) = mpsc::channel();
    std::thread::spawn(move || read_keys(keys));
    let ended = pump(&mut socket, &typed);
    drop(raw);
    match ended {
        Ok(()) => {
            let _ = socket.close(None);
            let _ = socket.flush();
            note("detached");
            Ok(())
        }
        Err(why) => {
            note(&format!("the console closed: {why}"));
            Err(ClientError::Failed(format!(
                "{vm}: the console closed: {why}"
            )))
        }
    }
}

/// Carries bytes both ways until the user detaches (`Ok`) or the console ends (`Err`).
fn pump(socket: &mut WebSocket<TcpStream>, typed: &mpsc::Receiver<Keys>) -> Result<(), String> {
    let mut stdout = std::io::stdout();
    loop {
        match socket.read() {
            Ok(Message::Binary(bytes)) => {
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
            }
            Ok(Message::Text(text)) => note(&control(&text)?),
            Ok(Message::Close(_)) => return Err("the agent closed the connection".into()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
        loop {
            match typed.try_recv() {
                Ok(Keys::Bytes(bytes)) => socket
                    .send(Message::Binary(bytes.into()))
                    .map_err(|e| e.to_string())?,
                Ok(Keys::Detach) => return Ok(()),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_say_who_types_and_why_it_closed() {
        assert_eq!(
            control(r#"{"writer":"alice","you":true}"#),
            Ok("you hold the keyboard".into())
        );
        assert_eq!(
            control(r#"{"writer":"bob","you":false}"#),
            Ok("bob is typing; you are watching".into())
        );
        assert_eq!(
            control(r#"{"writer":null,"you":false}"#),
            Ok("nobody is typing; type to take the keyboard".into())
        );
        assert_eq!(
            control(r#"{"closed":"the VM stopped"}"#),
            Err("the VM stopped".into())
        );
    }
}
