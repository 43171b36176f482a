//! A local SMTP sink for tests: accepts every message on a loopback port and keeps it, so a
//! test can check what an agent sent. Plain SMTP (no TLS, no AUTH), one thread per connection,
//! stopped on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message: headers and body, dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Mail {
    /// The `Subject:` header's value.
    pub fn subject(&self) -> String {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The first line of the body that starts with `prefix` (a link), trimmed.
    pub fn line_starting(&self, prefix: &str) -> Option<String> {
        let body = self.body();
        body.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    }

    /// The body as a mail client shows it: after the headers, quoted-printable decoded
    /// when the message says it is (soft line breaks joined, `=XX` turned into bytes).
    pub fn body(&self) -> String {
        let (head, body) = self.data.split_once("\r\n\r\n").unwrap_or(("", &self.data));
        let quoted = head
            .to_ascii_lowercase()
            .contains("content-transfer-encoding: quoted-printable");
        if !quoted {
            return body.to_owned();
        }
        let joined = body.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Listens on `ip`, on a port the kernel picks.
    pub fn start(ip: Ipv4Addr) -> SmtpSink {
        let listener = TcpListener::bind((ip, 0)).expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("sink address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopping) = (mails.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let kept = kept.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &kept);
                    });
                }
            }
        });
        SmtpSink { addr, mails, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for message number `n` (from 1) to an address containing `to`.
    pub fn wait_for(&self, to: &str, n: usize, timeout: std::time::Duration) -> Mail {
        crate::eventually(&format!("mail {n} to {to}"), timeout, || {
            let mails: Vec<Mail> = self
                .mails()
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t.contains(to)))
                .collect();
            mails
                .get(n - 1)
                .cloned()
                .ok_or_else(|| format!("{} mails", mails.len()))
        })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn address(arg: &str) -> String {
    arg.split_once(':')
        .map_or(arg, |(_, rest)| rest)
        .trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_owned()
}

fn serve(stream: TcpStream, kept: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-sink.test\r\n250 8BITMIME\r\n")?,
            "HELO" | "NOOP" => out.write_all(b"250 OK\r\n")?,
            "RSET" => {
                from.clear();
                to.clear();
                out.write_all(b"250 OK\r\n")?;
            }
            "MAIL" => {
                from = address(command);
                out.write_all(b"250 OK\r\n")?;
            }
            "RCPT" => {
                to.push(address(command));
                out.write_all(b"250 OK\r\n")?;
            }
            "DATA" => {
                out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if let Ok(mut mails) = kept.lock() {
                    mails.push(Mail {
                        from: std::mem::take(&mut from),
                        to: std::mem::take(&mut to),
                        data,
                    });
                }
                out.write_all(b"250 OK queued\r\n")?;
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"502 not implemented\r\n")?,
        }
    }
}
