//! `[smtp]`: where announcement emails go, and the `MailSettings` it checks into (the password
//! taken from the text of `password_file`, read beforehand). Sending them is `mail`'s job.

use std::fmt;
use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::files::ConfigFiles;

/// `[smtp]`: the server that takes the announcement emails this node sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `host:port` of the SMTP server: a local MTA (`127.0.0.1:25`) or the provider's
    /// submission port (`mail.example.org:587`).
    pub server: String,
    /// The sender: `address` or `Name <address>`.
    pub from: String,
    /// `none` (plain SMTP, for a local MTA), `starttls` (usually port 587) or `tls` (port
    /// 465). Default: `none` for a loopback server, `starttls` otherwise.
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    /// For SMTP AUTH, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the SMTP password. Its content never appears in logs or messages.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

/// `[smtp]`, checked, with the password read.
#[derive(Clone)]
pub struct MailSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Mailbox,
    /// (username, password) for SMTP AUTH.
    pub(crate) credentials: Option<(String, String)>,
}

impl fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("auth", &self.credentials.is_some())
            .finish()
    }
}

impl MailSettings {
    /// The checked settings, or None with each problem (naming its `smtp.` key) recorded. The
    /// password comes from `files`, which holds what `password_file` held.
    pub fn from_config(
        config: &SmtpConfig,
        files: &ConfigFiles,
        problems: &mut Vec<String>,
    ) -> Option<MailSettings> {
        let before = problems.len();
        let (host, port) = host_port(&config.server)
            .map_err(|problem| problems.push(problem))
            .unwrap_or_default();
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|_| {
                problems.push(format!(
                    "smtp.from: `{}` is not an address; write \"noreply@example.org\" or \"Co-op <noreply@example.org>\"",
                    config.from
                ))
            })
            .ok();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let tls = config.tls.unwrap_or(if loopback {
            SmtpTls::None
        } else {
            SmtpTls::Starttls
        });
        let credentials = credentials(config, files, problems);
        if credentials.is_some() && tls == SmtpTls::None && !loopback {
            problems.push(
                "smtp.tls: a password would cross the network in clear; set tls = \"starttls\" or \"tls\""
                    .into(),
            );
        }
        (problems.len() == before).then(|| MailSettings {
            host,
            port,
            tls,
            from: from.expect("checked"),
            credentials,
        })
    }
}

/// `smtp.server` as host and port.
fn host_port(server: &str) -> Result<(String, u16), String> {
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok((host.trim_matches(['[', ']']).to_owned(), port)),
            _ => Err(format!(
                "smtp.server: `{server}` has no valid port; write host:port, e.g. \"127.0.0.1:25\""
            )),
        },
        _ => Err(format!(
            "smtp.server: `{server}` is not host:port; write e.g. \"mail.example.org:587\""
        )),
    }
}

/// (username, password) when both `smtp.username` and `smtp.password_file` are set and the
/// file held a password; None, with the problem recorded if one is, otherwise.
fn credentials(
    config: &SmtpConfig,
    files: &ConfigFiles,
    problems: &mut Vec<String>,
) -> Option<(String, String)> {
    match (&config.username, &config.password_file) {
        (None, None) => None,
        (Some(user), Some(path)) => match files.text(path) {
            Ok(text) if !text.trim().is_empty() => {
                Some((user.clone(), text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            Ok(_) => {
                problems.push(format!("smtp.password_file: {} is empty", path.display()));
                None
            }
            Err(error) => {
                problems.push(format!(
                    "smtp.password_file: cannot read {}: {error}",
                    path.display()
                ));
                None
            }
        },
        _ => {
            problems.push(
                "smtp.username, smtp.password_file: give both for SMTP AUTH, or neither".into(),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(server: &str, from: &str) -> SmtpConfig {
        SmtpConfig {
            server: server.into(),
            from: from.into(),
            tls: None,
            username: None,
            password_file: None,
        }
    }

    fn settings(config: &SmtpConfig, problems: &mut Vec<String>) -> Option<MailSettings> {
        MailSettings::from_config(config, &ConfigFiles::default(), problems)
    }

    #[test]
    fn settings_name_each_bad_key() {
        let mut problems = vec![];
        let ok = settings(
            &config("127.0.0.1:2525", "Co-op <noreply@example.org>"),
            &mut problems,
        )
        .unwrap();
        assert_eq!((ok.port, ok.tls), (2525, SmtpTls::None));
        let remote = settings(&config("mail.example.org:587", "a@b.c"), &mut problems).unwrap();
        assert_eq!(remote.tls, SmtpTls::Starttls);
        assert!(problems.is_empty());
        assert!(settings(&config("nohost", "x"), &mut problems).is_none());
        assert!(problems[0].starts_with("smtp.server:"), "{problems:?}");
        assert!(problems[1].starts_with("smtp.from:"), "{problems:?}");
        let mut problems = vec![];
        let mut half = config("mail.example.org:587", "a@b.c");
        half.username = Some("u".into());
        assert!(settings(&half, &mut problems).is_none());
        assert!(problems[0].contains("give both"), "{problems:?}");
    }

    #[test]
    fn the_password_comes_from_the_files_read_beforehand() {
        let mut auth = config("mail.example.org:587", "a@b.c");
        auth.username = Some("u".into());
        auth.password_file = Some("/etc/hearth/smtp-password".into());
        let path = Path::new("/etc/hearth/smtp-password");
        let mut files = ConfigFiles::default();
        files.insert(path, Ok("hunter2\n".into()));
        let mut problems = vec![];
        let ok = MailSettings::from_config(&auth, &files, &mut problems).unwrap();
        assert_eq!(ok.credentials, Some(("u".into(), "hunter2".into())));
        assert!(!format!("{ok:?}").contains("hunter2"));

        files.insert(path, Ok(" \n".into()));
        assert!(MailSettings::from_config(&auth, &files, &mut problems).is_none());
        assert_eq!(
            problems,
            ["smtp.password_file: /etc/hearth/smtp-password is empty"]
        );

        let mut problems = vec![];
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        files.insert(path, Err(denied));
        assert!(MailSettings::from_config(&auth, &files, &mut problems).is_none());
        assert_eq!(
            problems,
            ["smtp.password_file: cannot read /etc/hearth/smtp-password: denied"]
        );
    }

    #[test]
    fn a_password_never_crosses_the_network_in_clear() {
        let mut auth = config("mail.example.org:25", "a@b.c");
        auth.tls = Some(SmtpTls::None);
        auth.username = Some("u".into());
        auth.password_file = Some("/pw".into());
        let mut files = ConfigFiles::default();
        files.insert("/pw", Ok("secret".into()));
        let mut problems = vec![];
        assert!(MailSettings::from_config(&auth, &files, &mut problems).is_none());
        assert!(
            problems[0].starts_with("smtp.tls: a password would cross"),
            "{problems:?}"
        );
        // To a local MTA it stays on the machine.
        auth.server = "127.0.0.1:25".into();
        let mut problems = vec![];
        assert!(MailSettings::from_config(&auth, &files, &mut problems).is_some());
        assert!(problems.is_empty(), "{problems:?}");
    }
}
