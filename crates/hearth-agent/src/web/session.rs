//! Web sessions as plain functions: the cookies (Secure, HttpOnly, SameSite=Strict), the CSRF
//! token of a session and one-shot flash messages. A session is an
//! ordinary API token with an expiry, created by the login form, so the panel and the API
//! check a caller the same way.

use axum::http::HeaderMap;
use axum::http::header;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;

/// The session cookie: the session's API token.
pub const SESSION_COOKIE: &str = "hearth_session";
/// A random value set by the login form and sent back in it (double submit), so another
/// site cannot log a browser into an account of its choosing.
pub const LOGIN_COOKIE: &str = "hearth_login";
/// The message shown once on the next page after a form was sent.
pub const FLASH_COOKIE: &str = "hearth_flash";
/// How long a session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: always HttpOnly, SameSite=Strict and Secure (browsers accept Secure
/// cookies from `http://localhost` and loopback addresses; anywhere else the panel must be
/// served over HTTPS). `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict")
}

/// The CSRF token of the session whose token is `session`: a hash of the secret the browser
/// holds in its HttpOnly cookie, which another site can neither read nor guess.
pub fn csrf_token(session: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth-csrf\0");
    hasher.update(session.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a form's CSRF field belongs to this session.
pub fn csrf_ok(session: &str, presented: &str) -> bool {
    constant_time_eq(csrf_token(session).as_bytes(), presented.as_bytes())
}

/// A random value for the login form's double-submit cookie.
pub fn random_value() -> String {
    let mut bytes = [0u8; 18];
    rand::fill(&mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A flash message: `ok` or not, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

impl Flash {
    /// The cookie value (base64url, so any text fits in a cookie).
    pub fn encode(&self) -> String {
        let raw = format!("{}{}", if self.ok { 'o' } else { 'e' }, self.text);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_bytes())
    }

    pub fn decode(value: &str) -> Option<Flash> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut chars = raw.chars();
        let ok = match chars.next()? {
            'o' => true,
            'e' => false,
            _ => return None,
        };
        Some(Flash {
            ok,
            text: chars.as_str().chars().take(2000).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_are_read_by_name_and_set_strictly() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; hearth_session=hth_x.y"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("hth_x.y"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "v", 60);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(set.contains(part), "{set}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let token = csrf_token("hth_a.secret");
        assert!(csrf_ok("hth_a.secret", &token));
        assert!(!csrf_ok("hth_a.other", &token));
        assert!(!csrf_ok("hth_a.secret", ""));
    }

    #[test]
    fn flash_messages_round_trip_and_garbage_is_ignored() {
        let flash = Flash {
            ok: false,
            text: "name: <b>taken</b>; é".into(),
        };
        assert_eq!(Flash::decode(&flash.encode()), Some(flash));
        assert_eq!(Flash::decode("!!"), None);
        assert_eq!(Flash::decode(""), None);
    }
}
