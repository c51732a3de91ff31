//! What the `pages` component decides for each request, as pure functions: which page a
//! path shows, which language the fan reads, and the headers that go with each answer.

/// What a request path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A page by name (see [`crate::PAGES`] with the `bundle` feature).
    Page(&'static str),
    /// A file under `/assets/` by its (hashed) path.
    Asset(&'a str),
    /// Nothing: answered with the not-found page (404).
    NotFound,
}

/// An id segment as the API's ids look: `a-z`, `A-Z`, `0-9`, `-`, `_`, at most 64 bytes.
fn is_id(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= 64
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Maps a path (no query) to what it shows.
pub fn route(path: &str) -> Target<'_> {
    if path.starts_with("/assets/") {
        return Target::Asset(path);
    }
    if path == "/" {
        return Target::Page("home");
    }
    // Browsers ask for `/favicon.ico` on their own, whatever the page declares.
    if path == "/favicon.ico" {
        return Target::Asset("/assets/icon.svg");
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    match segs.as_slice() {
        ["signin"] => Target::Page("signin"),
        ["orders"] => Target::Page("orders"),
        ["orders", id] if is_id(id) => Target::Page("order"),
        ["events", id] if is_id(id) => Target::Page("event"),
        ["events", id, "queue"] if is_id(id) => Target::Page("queue"),
        ["events", id, "seats"] if is_id(id) => Target::Page("seats"),
        ["events", id, "checkout"] if is_id(id) => Target::Page("checkout"),
        _ => Target::NotFound,
    }
}

/// Picks the language from `Accept-Language` (`de-DE,de;q=0.9,en;q=0.8`): the available
/// language with the highest weight, by primary subtag; `langs[0]` when none matches.
pub fn negotiate<'l>(accept_language: Option<&str>, langs: &[&'l str]) -> &'l str {
    let default = langs.first().copied().unwrap_or("en");
    let Some(header) = accept_language else { return default };
    let mut best: Option<(u32, usize, &'l str)> = None;
    for (pos, item) in header.split(',').enumerate().take(32) {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1000u32;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = parse_q(v).unwrap_or(0);
            }
        }
        if q == 0 {
            continue;
        }
        let found = if primary == "*" {
            Some(default)
        } else {
            langs.iter().copied().find(|l| l.eq_ignore_ascii_case(&primary))
        };
        if let Some(lang) = found {
            // Higher q wins; on a tie, the earlier entry.
            let better = match best {
                None => true,
                Some((bq, bpos, _)) => q > bq || (q == bq && pos < bpos),
            };
            if better {
                best = Some((q, pos, lang));
            }
        }
    }
    best.map_or(default, |(_, _, l)| l)
}

/// A q-value in thousandths (`0.8` -> 800), or `None` when malformed.
fn parse_q(v: &str) -> Option<u32> {
    let v = v.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u32;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u32::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// Whether the client takes gzip (`Accept-Encoding`), honouring `gzip;q=0`.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|h| {
        h.split(',').any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().strip_prefix("q=").and_then(parse_q) == Some(0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
    })
}

/// Where the payment provider's hosted fields are, in the checkout page: the component
/// replaces these placeholders at serve time (and the page is then served uncompressed).
pub const PAYMENTS_URL_PLACEHOLDER: &str = "__TESSERA_PAYMENTS_URL__";
pub const PAYMENTS_KEY_PLACEHOLDER: &str = "__TESSERA_PAYMENTS_KEY__";

/// Cache policy of content-hashed assets.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// Cache policy of pages: kept, but revalidated on every use (they name the assets).
pub const PAGE_CACHE_CONTROL: &str = "no-cache";

/// The origin (`https://host[:port]`) of a configured URL, if it is a plain http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let host = rest.split('/').next().unwrap_or("");
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then(|| format!("{scheme}://{host}"))
}

/// The Content-Security-Policy of a page: only this origin's scripts (plus the page's one
/// inline import map, by hash), no inline styles, API calls to this origin only, and the
/// payment provider's hosted fields as the only frame.
pub fn page_csp(script_hash: &str, frame_origin: Option<&str>) -> String {
    format!(
        "default-src 'self'; script-src 'self' {script_hash}; style-src 'self'; img-src 'self' blob: data:; \
         connect-src 'self'; worker-src 'self'; frame-src {}; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
        frame_origin.unwrap_or("'none'")
    )
}

/// Headers every page carries besides its CSP.
pub const PAGE_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_paths_to_pages() {
        assert_eq!(route("/"), Target::Page("home"));
        assert_eq!(route("/signin"), Target::Page("signin"));
        assert_eq!(route("/orders/"), Target::Page("orders"));
        assert_eq!(route("/orders/o_abc12345"), Target::Page("order"));
        assert_eq!(route("/events/riverside-live"), Target::Page("event"));
        assert_eq!(route("/events/riverside-live/queue"), Target::Page("queue"));
        assert_eq!(route("/events/riverside-live/seats"), Target::Page("seats"));
        assert_eq!(route("/events/riverside-live/checkout"), Target::Page("checkout"));
        assert_eq!(
            route("/assets/app.0123456789.css"),
            Target::Asset("/assets/app.0123456789.css")
        );
        assert_eq!(route("/favicon.ico"), Target::Asset("/assets/icon.svg"));
        assert_eq!(route("/favicon.ico/x"), Target::NotFound);
        assert_eq!(route("/events/a%20b"), Target::NotFound);
        assert_eq!(route("/events/x/queue/more"), Target::NotFound);
        assert_eq!(route("/events//queue"), Target::NotFound);
        assert_eq!(route("/nope"), Target::NotFound);
        assert_eq!(route("//"), Target::NotFound);
    }

    #[test]
    fn negotiates_the_language_by_weight() {
        let langs = ["en", "de"];
        assert_eq!(negotiate(None, &langs), "en");
        assert_eq!(negotiate(Some("de-DE,de;q=0.9,en;q=0.8"), &langs), "de");
        assert_eq!(negotiate(Some("fr-FR,fr;q=0.9,de;q=0.5,en;q=0.4"), &langs), "de");
        assert_eq!(negotiate(Some("en-GB,en;q=0.8"), &langs), "en");
        assert_eq!(negotiate(Some("de;q=0, en"), &langs), "en");
        assert_eq!(negotiate(Some("fr"), &langs), "en");
        assert_eq!(negotiate(Some("DE"), &langs), "de");
        assert_eq!(negotiate(Some("*;q=0.5, de;q=0.6"), &langs), "de");
        assert_eq!(negotiate(Some("de;q=bogus, en;q=0.1"), &langs), "en");
        assert_eq!(negotiate(Some(""), &langs), "en");
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("br")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn origins_are_plain_http_origins() {
        assert_eq!(origin_of("http://127.0.0.1:8082").as_deref(), Some("http://127.0.0.1:8082"));
        assert_eq!(origin_of("https://pay.example/x").as_deref(), Some("https://pay.example"));
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("http://a b"), None);
        assert_eq!(origin_of("http://x;'unsafe-inline'"), None);
    }
}
