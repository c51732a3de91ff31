//! The HTTP error contract and server plumbing for axum services.
//!
//! Every error leaves a service as `{"code": ..., "message": ...}` with the status from
//! [`ErrorCode::status`]. Client errors (4xx) are not logged; an internal error becomes a
//! bare 500 `internal` and its cause chain is logged once, here.

use std::future::Future;
use std::net::SocketAddr;
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
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), source: None }
    }
    /// A 500 whose cause is logged and not shown.
    pub fn internal(source: anyhow::Error) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            source: Some(source),
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
        error_response(self.code, &self.message)
    }
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

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("invalid request body: {}", e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected a request with `content-type: application/json`",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::BodyTooLarge, "request body is too large")
            } else {
                ApiError::new(ErrorCode::InvalidRequest, "failed to read request body")
            }
        }
        other => ApiError::new(ErrorCode::InvalidRequest, other.body_text()),
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
