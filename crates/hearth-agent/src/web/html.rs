//! What every page shares: HTML escaping, dates, the page frame with its one stylesheet,
//! and the security headers every answer carries.

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-29 03:04 UTC` from Unix seconds.
pub fn utc(secs: u64) -> String {
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let (year, month, day) = hearth_types::uptime::civil(secs / 86_400);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The headers every answer carries: the pages may not be framed (clickjacking), run no
/// script, load nothing from elsewhere, and post forms only to this node; the one inline
/// style sheet is allowed by its hash.
pub fn security_headers() -> [(&'static str, String); 4] {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let style = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
    [
        (
            "content-security-policy",
            format!(
                "default-src 'none'; style-src 'sha256-{style}'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
        ),
        ("x-frame-options", "DENY".into()),
        ("x-content-type-options", "nosniff".into()),
        ("referrer-policy", "same-origin".into()),
    ]
}

/// A whole page around `body`: one small inline style sheet, no scripts.
pub fn page(title: &str, body: &str) -> String {
    page_with(title, "", body)
}

/// A page with more in its head (the terminal page's script and style sheet, which need
/// [`TERMINAL_CSP`]).
pub fn page_with(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style>{head}</head><body>\n{body}\n</body></html>\n",
        title = escape(title),
    )
}

/// The terminal page's policy: scripts from this node only (xterm.js and the page's own,
/// nothing inline), its WebSocket to this node, and inline styles, which xterm.js writes
/// into `<style>` elements as it draws. An answer that sets its own policy keeps it.
pub const TERMINAL_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font:16px/1.45 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#1d1d1d;background:#fafaf7}\
h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .4rem;border-bottom:1px solid #ddd}\
.ok{color:#1b6e20}.warn{color:#8a5a00}.bad{color:#a11}.muted{color:#666;font-size:.9rem}\
.notice{border-left:4px solid #8a5a00;padding:.3rem .8rem;margin:.6rem 0;background:#fff}\
.notice.incident{border-color:#a11}.notice.resolved{border-color:#1b6e20;opacity:.8}\
nav{display:flex;flex-wrap:wrap;gap:.3rem .9rem;align-items:center;padding:.4rem 0 .6rem;border-bottom:1px solid #ddd;margin-bottom:.8rem}\
nav a{color:#1d1d1d}nav a.on{font-weight:700}nav .who{margin-left:auto;color:#666}\
form.inline{display:inline}form.stack label{display:block;margin:.5rem 0 .2rem}\
input,select,textarea,button{font:inherit;padding:.35rem .5rem;max-width:100%;box-sizing:border-box}\
form.stack input,form.stack select,form.stack textarea{width:100%}\
button{border:1px solid #888;border-radius:4px;background:#fff;cursor:pointer}button.danger{border-color:#a11;color:#a11}\
.flash{padding:.5rem .8rem;margin:.6rem 0;border-left:4px solid #1b6e20;background:#fff}.flash.error{border-color:#a11}\
.scroll{overflow-x:auto}pre{background:#111;color:#eee;padding:.6rem;overflow-x:auto;font-size:.8rem;max-height:28rem}\
.uptime{margin:.7rem 0}.axis{display:flex;justify-content:space-between;gap:1rem}\
svg.bars,svg.timeline{display:block;width:100%;height:auto;margin:.2rem 0}\
.hosts{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:.4rem 1.5rem}\
svg.meters{display:block;width:100%;max-width:22rem;height:auto}\
svg.chart{display:block;width:100%;max-width:40rem;height:auto}h3{font-size:1rem;margin:1rem 0 .3rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem}dt{color:#666}dd{margin:0}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert!(page("<x>", "").contains("<title>&lt;x&gt;</title>"));
    }
}
