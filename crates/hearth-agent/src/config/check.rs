//! `[service.check]`: how a service instance is checked, and the `http://` target an HTTP
//! check parses its URL into.

use std::time::Duration;

use serde::Deserialize;

use super::defaults::{
    default_check_interval, default_check_timeout, default_fall, default_rise, duration,
};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Passes on an HTTP 2xx answer to a GET of this `http://` URL.
    #[serde(default)]
    pub http: Option<String>,
    /// Passes when a TCP connection to this `IP:port` opens.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Passes when this command (program and arguments) exits 0.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default = "default_check_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Passes in a row before a failing (or new) instance counts as passing.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row before a passing instance counts as failing.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// A parsed `http://host:port/path` check target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpTarget {
    /// Parses a plain `http://` URL; `None` for anything else (https is not supported).
    pub fn parse(url: &str) -> Option<HttpTarget> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(idx) => (&rest[..idx], &rest[idx..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host, port.parse::<u16>().ok()?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || host.contains(char::is_whitespace)
            || path.contains(char::is_whitespace)
        {
            return None;
        }
        Some(HttpTarget {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_targets_parse() {
        let t = HttpTarget::parse("http://127.0.0.1:8080/healthz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/healthz")
        );
        let t = HttpTarget::parse("http://localhost").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 80, "/")
        );
        let t = HttpTarget::parse("http://[::1]:81/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        assert!(HttpTarget::parse("https://example.org/").is_none());
        assert!(HttpTarget::parse("http://:80/").is_none());
        assert!(HttpTarget::parse("http://h:notaport/").is_none());
    }
}
