//! The HTTP error contract and server plumbing for axum services.
//!
//! Every error leaves a service as `{"code": ..., "message": ...}` with the status from
//! [`ErrorCode::status`]. Client errors (4xx) are not logged; an internal error becomes a
//! bare 500 `internal` and its cause chain is logged once, here.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_api::{ApiErrorBody, ErrorCode};
use tracing::Instrument as _;

/// An error as a service returns it.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The cause of an internal error; logged, never sent.
    pub source: Option<anyhow::Error>,
    /// Why a request was refused, for the log only (see [`ApiError::refused`]).
    pub reason: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), source: None, reason: None }
    }
    /// A refusal at a security check: the caller gets `code` and a `message` that does not
    /// say which check failed; the `reason` is logged once at WARN (never a token or a
    /// secret in it) and the refusal is counted in `tessera_http_refusals_total{code}`.
    pub fn refused(code: ErrorCode, message: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), source: None, reason: Some(reason.into()) }
    }
    /// A 500 whose cause is logged and not shown.
    pub fn internal(source: anyhow::Error) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            source: Some(source),
            reason: None,
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unavailable, message)
    }
    pub fn body(&self) -> ApiErrorBody {
        ApiErrorBody::new(self.code, self.message.clone())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            tracing::error!(code = self.code.as_str(), "request failed: {source:#}");
        }
        if let Some(reason) = &self.reason {
            record_refusal(self.code, reason);
        }
        error_response(self.code, &self.message)
    }
}

/// Logs a refusal once at WARN and counts it (`tessera_http_refusals_total{code}`).
pub fn record_refusal(code: ErrorCode, reason: &str) {
    tracing::warn!(code = code.as_str(), reason, "request refused");
    metrics::counter!("tessera_http_refusals_total", "code" => code.as_str()).increment(1);
}

/// Builds an error response.
pub fn error_response(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ApiErrorBody::new(code, message).to_json();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A JSON body extractor whose rejections follow the error contract
/// (`malformed_json`, `unsupported_media_type`, `body_too_large`, `invalid_request`),
/// and a JSON response type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Body rejections are bad input at the service's edge: refused with a code, logged once
/// with the parser's reason, counted.
fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            ApiError::refused(
                ErrorCode::InvalidRequest,
                format!("invalid request body: {text}"),
                "body does not match the request type",
            )
        }
        JsonRejection::JsonSyntaxError(e) => {
            let text = e.body_text();
            let reason = if text.contains("recursion limit") {
                "body nests too deeply"
            } else {
                "body is not JSON"
            };
            ApiError::refused(ErrorCode::MalformedJson, format!("malformed JSON: {text}"), reason)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::refused(
            ErrorCode::UnsupportedMediaType,
            "expected a request with `content-type: application/json`",
            "content type is not JSON",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::refused(
                    ErrorCode::BodyTooLarge,
                    "request body is too large",
                    "body over the limit",
                )
            } else {
                ApiError::refused(
                    ErrorCode::InvalidRequest,
                    "failed to read request body",
                    "body could not be read",
                )
            }
        }
        other => {
            ApiError::refused(ErrorCode::InvalidRequest, other.body_text(), "body was refused")
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// Rewrites bodiless error responses produced by axum itself (405, 413, 404 from nested
/// routers) into the JSON contract, so that no path answers without a `code`.
pub async fn normalize_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ErrorCode::Timeout,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        s if s.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    let message = match code {
        ErrorCode::NotFound => "no such route",
        ErrorCode::MethodNotAllowed => "method not allowed on this route",
        ErrorCode::BodyTooLarge => "request body is too large",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let mut out = error_response(code, message);
    for (k, v) in resp.headers() {
        if k == header::ALLOW {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Opens the request span (once, at the service edge), joins the caller's trace, and
/// records `tessera_http_requests_total` and `tessera_http_request_duration_seconds`.
pub async fn observe(service: &'static str, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http.request",
        service,
        method = %method,
        route = %route,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::set_parent_from_headers(&span, req.headers());
    let started = Instant::now();
    let resp = async {
        if let Some(id) = crate::telemetry::current_trace_id() {
            tracing::Span::current().record("trace_id", id.as_str());
        }
        next.run(req).await
    }
    .instrument(span.clone())
    .await;
    let status = resp.status();
    span.record("status", status.as_u16());
    let class = match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("tessera_http_requests_total", "service" => service, "route" => route.clone(), "method" => method.to_string(), "status" => class).increment(1);
    metrics::histogram!("tessera_http_request_duration_seconds", "service" => service, "route" => route).record(elapsed);
    resp
}

/// Wraps a service router with the shared layers: error normalization, request span and
/// metrics, a body size limit, the `/metrics` route and the JSON 404 fallback.
pub fn with_common_layers(
    service: &'static str,
    router: Router,
    body_limit_bytes: usize,
) -> Router {
    router
        .merge(crate::metrics::route())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(normalize_errors))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit_bytes))
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            observe(service, req, next)
        }))
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// HTTPS for a service's listener (the `[tls]` table): its certificate chain and key, and
/// optionally the certificate authority whose client certificates it requires (mutual
/// TLS between the router and the cores).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServerTlsConfig {
    /// PEM certificate chain; HTTPS is on when set.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// PEM certificate authority; when set, clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Adds the problems of these settings (under `prefix`) to `checks`.
    pub fn check(&self, prefix: &str, checks: &mut crate::config::Checks<'_>) {
        let files = [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("client_ca_file", &self.client_ca_file),
        ];
        for (name, file) in files {
            if let Some(f) = file
                && !f.is_file()
            {
                checks
                    .error(&format!("{prefix}.{name}"), format!("{} does not exist", f.display()));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            checks.error(&format!("{prefix}.key_file"), "cert_file and key_file go together");
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            checks.error(&format!("{prefix}.client_ca_file"), "needs cert_file and key_file");
        }
    }

    /// The TLS acceptor, when HTTPS is on.
    pub fn acceptor(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("read tls.cert_file {}: {e}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow::anyhow!("read tls.key_file {}: {e}", key.display()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| anyhow::anyhow!("read tls.client_ca_file {}: {e}", ca.display()))?
                {
                    roots.add(c?)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))))
    }
}

/// [`serve`], over TLS when `tls` is set: each connection completes its handshake (10 s
/// at most) before HTTP/1.1 or HTTP/2 is served on it; a failed handshake is counted in
/// `tessera_http_tls_handshake_failures_total` and closes only that connection.
pub async fn serve_maybe_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(acceptor) = tls else {
        return serve(listener, router, shutdown).await;
    };
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    metrics::counter!("tessera_http_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    router.clone().oneshot(req)
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body1 {
        #[allow(dead_code)]
        n: u32,
    }

    fn app() -> Router {
        let r = Router::new().route("/x", post(|Json(_b): Json<Body1>| async { "ok" }));
        with_common_layers("test", r, 64)
    }

    async fn call(req: Request) -> (u16, String) {
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, v["code"].as_str().unwrap_or("<none>").to_owned())
    }

    fn post_json(uri: &str, body: &str) -> Request {
        Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn every_bad_request_gets_a_json_code() {
        assert_eq!(call(post_json("/x", "{\"n\":1}")).await.0, 200);
        assert_eq!(call(post_json("/x", "{nope")).await, (400, "malformed_json".into()));
        assert_eq!(call(post_json("/x", "{\"n\":-1}")).await, (400, "invalid_request".into()));
        assert_eq!(
            call(post_json("/x", "{\"n\":1,\"m\":2}")).await,
            (400, "invalid_request".into())
        );
        let big = format!("{{\"n\":1,\"pad\":\"{}\"}}", "x".repeat(200));
        assert_eq!(call(post_json("/x", &big)).await, (413, "body_too_large".into()));
        assert_eq!(call(post_json("/nope", "{}")).await, (404, "not_found".into()));
        let get = Request::get("/x").body(Body::empty()).unwrap();
        assert_eq!(call(get).await, (405, "method_not_allowed".into()));
        let no_ct = Request::post("/x").body(Body::from("{\"n\":1}")).unwrap();
        assert_eq!(call(no_ct).await, (415, "unsupported_media_type".into()));
    }
}
