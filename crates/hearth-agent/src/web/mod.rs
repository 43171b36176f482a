//! Server-rendered HTML: small pages that work on a phone and without JavaScript. The page
//! builders are pure functions over data; the routes only gather that data.

pub mod status;

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

/// A whole page around `body`: one small inline style sheet, no scripts.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        title = escape(title),
    )
}

const STYLE: &str = "body{font:16px/1.45 system-ui,sans-serif;max-width:46rem;margin:0 auto;padding:1rem;color:#1d1d1d;background:#fafaf7}\
h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .4rem;border-bottom:1px solid #ddd}\
.ok{color:#1b6e20}.warn{color:#8a5a00}.bad{color:#a11}.muted{color:#666;font-size:.9rem}\
.notice{border-left:4px solid #8a5a00;padding:.3rem .8rem;margin:.6rem 0;background:#fff}\
.notice.incident{border-color:#a11}.notice.resolved{border-color:#1b6e20;opacity:.8}";

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
