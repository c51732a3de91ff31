//! The outbound allow-list, with the semantics of Spin's `allowed_outbound_hosts`:
//! `scheme://host[:port]` where the scheme may be `*`, the host `*` or `*.suffix`, and the
//! port `*` (omitted: the scheme's default port). `http://self` means this application's
//! own components; `http://<id>.spin.internal` is service chaining.

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Suffix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Default,
    Exact(u16),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> anyhow::Result<AllowedHost> {
        let (scheme, rest) =
            entry.split_once("://").with_context(|| format!("`{entry}` lacks a scheme"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("`{entry}` must not have a path");
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) =
                v6.split_once(']').with_context(|| format!("bad host in `{entry}`"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => {
                PortPattern::Exact(p.parse().with_context(|| format!("bad port in `{entry}`"))?)
            }
        };
        let host = match host {
            "*" => HostPattern::Any,
            h if h.starts_with("*.") => HostPattern::Suffix(h[1..].to_ascii_lowercase()),
            h if h.is_empty() || h.contains('*') => bail!("bad host in `{entry}`"),
            h => HostPattern::Exact(h.to_ascii_lowercase()),
        };
        let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
        Ok(AllowedHost { scheme, host, port })
    }

    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()),
            HostPattern::Exact(h) => *h == host,
        };
        if !host_ok {
            return false;
        }
        let port = port.or_else(|| default_port(scheme));
        match &self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => port == Some(*p),
            PortPattern::Default => port.is_some() && port == default_port(scheme),
        }
    }
}

/// A component's allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    pub fn parse(entries: &[String]) -> anyhow::Result<AllowList> {
        let mut out = Vec::new();
        for e in entries {
            if e == "http://self" || e == "https://self" {
                out.push(AllowedHost::parse("http://*.spin.internal")?);
                continue;
            }
            out.push(AllowedHost::parse(e)?);
        }
        Ok(AllowList(out))
    }

    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("http");
        let Some(host) = uri.host() else { return false };
        self.0.iter().any(|a| a.allows(scheme, host, uri.port_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str], url: &str) -> bool {
        let list =
            AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        list.allows(&url.parse().unwrap())
    }

    #[test]
    fn matches_like_spin_allowed_outbound_hosts() {
        assert!(allowed(&["http://127.0.0.1:8081"], "http://127.0.0.1:8081/v1/events"));
        assert!(!allowed(&["http://127.0.0.1:8081"], "http://127.0.0.1:8082/v1/events"));
        assert!(!allowed(&["http://127.0.0.1:8081"], "https://127.0.0.1:8081/"));
        assert!(allowed(&["http://bot-score.spin.internal"], "http://bot-score.spin.internal/x"));
        assert!(!allowed(
            &["http://bot-score.spin.internal"],
            "http://waiting-room.spin.internal/x"
        ));
        assert!(allowed(&["http://*.spin.internal"], "http://waiting-room.spin.internal/x"));
        assert!(allowed(&["http://self"], "http://waiting-room.spin.internal/x"));
        assert!(allowed(&["*://*:*"], "https://example.com:9/x"));
        assert!(allowed(&["https://example.com"], "https://example.com/x"));
        assert!(!allowed(&["https://example.com"], "https://example.com:8443/x"));
        assert!(allowed(&["http://localhost:*"], "http://localhost:3/x"));
        assert!(!allowed(&[], "http://localhost:3/x"));
    }
}
