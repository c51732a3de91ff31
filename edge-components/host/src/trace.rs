//! W3C trace context at the edge: the host continues the caller's trace (or starts one)
//! with its own `edge.request` span as the parent the components pass on to the router.

use rand::RngCore as _;

/// The trace an incoming request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub flags: u8,
    pub tracestate: Option<String>,
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

impl TraceCtx {
    /// From `traceparent`/`tracestate` headers; a new trace when absent or invalid.
    pub fn from_headers(headers: &http::HeaderMap) -> TraceCtx {
        TraceCtx::parse(headers).unwrap_or_else(|| {
            let mut trace_id = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut trace_id);
            TraceCtx { trace_id, flags: 1, tracestate: None }
        })
    }

    /// From a valid `traceparent` (and `tracestate`) only.
    pub fn parse(headers: &http::HeaderMap) -> Option<TraceCtx> {
        let parsed = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|tp| {
            let mut parts = tp.trim().split('-');
            let (Some(version), Some(trace), Some(parent), Some(flags)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            if version == "ff" || parse_hex::<1>(version).is_none() {
                return None;
            }
            let trace_id = parse_hex::<16>(trace)?;
            let parent = parse_hex::<8>(parent)?;
            if trace_id == [0; 16] || parent == [0; 8] {
                return None;
            }
            let flags = parse_hex::<1>(flags)?[0];
            Some((trace_id, flags))
        });
        let (trace_id, flags) = parsed?;
        Some(TraceCtx {
            trace_id,
            flags,
            tracestate: headers.get("tracestate").and_then(|v| v.to_str().ok()).map(str::to_owned),
        })
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// A `traceparent` for a new outbound hop.
    pub fn child_traceparent(&self) -> String {
        let mut span = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut span);
        if span == [0; 8] {
            span[7] = 1;
        }
        format!("00-{}-{}-{:02x}", self.trace_id_hex(), hex::encode(span), self.flags)
    }

    /// The `traceparent` a component receives for an incoming request: `span` (the edge's
    /// request span, whose parent was set from `headers` before it was entered) as the
    /// parent. With OpenTelemetry configured that is the exported span, so the router's
    /// spans hang under it; otherwise a fresh span id in the caller's trace, or in a new one.
    pub fn continue_in(span: &tracing::Span, headers: &http::HeaderMap) -> String {
        let mut injected = http::HeaderMap::new();
        span.in_scope(|| tessera_runtime::telemetry::inject_headers(&mut injected));
        if let Some(tp) = injected.get("traceparent").and_then(|v| v.to_str().ok()) {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(tp) {
                h.insert("traceparent", v);
            }
            if TraceCtx::parse(&h).is_some() {
                return tp.to_owned();
            }
        }
        TraceCtx::from_headers(headers).child_traceparent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_an_incoming_trace_with_a_new_parent() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        let t = TraceCtx::from_headers(&h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child_traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(&child[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn starts_a_trace_when_none_or_garbage_arrives() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-zz-00-01".parse().unwrap());
        let t = TraceCtx::from_headers(&h);
        assert_ne!(t.trace_id, [0; 16]);
        assert_eq!(t.child_traceparent().len(), 55);
    }
}
