//! Test support (never linked into a service): a development mail sink, a small SMTP server (RFC 5321's core commands, no relaying,
//! no authentication) that stores every message it accepts as a file, and an HTTP view of
//! them (`GET /messages`). It stands in for a mail provider in the local stack and tests.
//!
//! It is not a mail server: it never delivers anything anywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::get;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tessera_api::ErrorCode;
use tessera_runtime::{ApiError, Json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest message accepted, in bytes.
pub const MESSAGE_SIZE_MAX: usize = 10 * 1024 * 1024;
/// Longest command line accepted (RFC 5321 allows 512; leave room for extensions).
const LINE_LEN_MAX: usize = 4096;
const RECIPIENTS_MAX: usize = 100;

/// Settings of `tessera-mailsink`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MailsinkConfig {
    /// A development tool: runs only in `local` mode (production, the default, refuses).
    pub mode: tessera_runtime::config::Mode,
    pub smtp_listen: String,
    pub http_listen: String,
    /// Where messages are kept, one JSON file each.
    pub dir: PathBuf,
    pub body_limit_bytes: usize,
    pub telemetry: tessera_runtime::telemetry::TelemetryConfig,
}

impl Default for MailsinkConfig {
    fn default() -> Self {
        MailsinkConfig {
            mode: tessera_runtime::config::Mode::default(),
            smtp_listen: "127.0.0.1:2525".to_owned(),
            http_listen: "127.0.0.1:7425".to_owned(),
            dir: PathBuf::from("var/mailsink"),
            body_limit_bytes: 64 * 1024,
            telemetry: Default::default(),
        }
    }
}

/// A message as stored: the SMTP envelope and the raw message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: String,
    pub received_at_ms: u64,
    /// `MAIL FROM`.
    pub envelope_from: String,
    /// `RCPT TO`, in order.
    pub envelope_to: Vec<String>,
    /// The message as received (headers and body, dot-unstuffed, CRLF line ends).
    pub raw: String,
}

/// A message as `GET /messages` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub received_at_ms: u64,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message_id: Option<String>,
    /// The body, with a quoted-printable or base64 transfer encoding undone.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageList {
    pub messages: Vec<MessageView>,
}

/// The messages kept in a directory.
#[derive(Debug)]
pub struct Mailbox {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Mailbox {
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let existing = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name().to_str().and_then(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0);
        Ok(Arc::new(Mailbox { dir, seq: AtomicU64::new(existing + 1) }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a message durably (write, fsync, rename) and returns its id.
    fn store(
        &self,
        envelope_from: String,
        envelope_to: Vec<String>,
        raw: String,
        now_ms: u64,
    ) -> std::io::Result<String> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("{n:010}");
        let msg = StoredMessage {
            id: id.clone(),
            received_at_ms: now_ms,
            envelope_from,
            envelope_to,
            raw,
        };
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let bytes = serde_json::to_vec(&msg).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(format!("{id}.json")))?;
        Ok(id)
    }

    /// Every stored message, oldest first.
    pub fn list(&self) -> std::io::Result<Vec<StoredMessage>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for p in names {
            let bytes = std::fs::read(&p)?;
            if let Ok(m) = serde_json::from_slice::<StoredMessage>(&bytes) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Removes every stored message.
    pub fn clear(&self) -> std::io::Result<()> {
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    tessera_common::Clock::now_ms(&tessera_common::SystemClock)
}

/// Accepts SMTP connections on `listener` until the task is dropped.
pub async fn serve_smtp(listener: TcpListener, mailbox: Arc<Mailbox>) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("failed to accept an smtp connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mailbox = mailbox.clone();
        tokio::spawn(async move {
            if let Err(e) = session(sock, &mailbox).await {
                tracing::debug!("smtp session ended: {e:#}");
            }
        });
    }
}

/// Reads one CRLF (or LF) terminated line, refusing overlong ones.
async fn read_line(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    buf: &mut Vec<u8>,
    max: usize,
) -> anyhow::Result<bool> {
    buf.clear();
    let n = tokio::time::timeout(
        Duration::from_secs(300),
        (&mut *r).take(max as u64 + 1).read_until(b'\n', buf),
    )
    .await
    .context("client idle")??;
    if n == 0 {
        return Ok(false);
    }
    anyhow::ensure!(buf.len() <= max, "line too long");
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(true)
}

/// `<addr>` out of `FROM:<addr> PARAMS`.
fn path_arg(rest: &str) -> Option<String> {
    let start = rest.find('<')?;
    let end = rest[start..].find('>')? + start;
    Some(rest[start + 1..end].to_owned())
}

async fn session(sock: TcpStream, mailbox: &Mailbox) -> anyhow::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 tessera-mailsink ESMTP ready\r\n").await?;
    let mut line = Vec::new();
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    loop {
        if !read_line(&mut r, &mut line, LINE_LEN_MAX).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let (verb, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let reply: &[u8] = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                from = None;
                to.clear();
                let r = format!(
                    "250-tessera-mailsink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {MESSAGE_SIZE_MAX}\r\n"
                );
                w.write_all(r.as_bytes()).await?;
                continue;
            }
            "HELO" => {
                from = None;
                to.clear();
                b"250 tessera-mailsink\r\n"
            }
            "MAIL" if rest.to_ascii_uppercase().starts_with("FROM:") => match path_arg(rest) {
                Some(a) => {
                    from = Some(a);
                    to.clear();
                    b"250 2.1.0 OK\r\n"
                }
                None => b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n",
            },
            "RCPT" if rest.to_ascii_uppercase().starts_with("TO:") => match (&from, path_arg(rest))
            {
                (None, _) => b"503 5.5.1 MAIL first\r\n",
                (_, None) => b"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
                (_, Some(_)) if to.len() >= RECIPIENTS_MAX => b"452 4.5.3 Too many recipients\r\n",
                (_, Some(a)) => {
                    to.push(a);
                    b"250 2.1.5 OK\r\n"
                }
            },
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    w.write_all(b"503 5.5.1 MAIL and RCPT first\r\n").await?;
                    continue;
                }
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut raw = String::new();
                let mut too_big = false;
                loop {
                    if !read_line(&mut r, &mut line, 1000 * 64).await? {
                        return Ok(());
                    }
                    if line == b"." {
                        break;
                    }
                    // Transparency (RFC 5321 4.5.2): a leading dot was doubled by the client.
                    let l = line.strip_prefix(b".").unwrap_or(&line);
                    if raw.len() + l.len() + 2 > MESSAGE_SIZE_MAX {
                        too_big = true;
                        continue;
                    }
                    raw.push_str(&String::from_utf8_lossy(l));
                    raw.push_str("\r\n");
                }
                if too_big {
                    b"552 5.3.4 Message too big\r\n"
                } else {
                    let rcpts = std::mem::take(&mut to);
                    let sender = from.take().unwrap_or_default();
                    match mailbox.store(sender, rcpts, raw, now_ms()) {
                        Ok(id) => {
                            metrics::counter!("tessera_notifications_mailsink_messages_total")
                                .increment(1);
                            w.write_all(format!("250 2.0.0 OK queued as {id}\r\n").as_bytes())
                                .await?;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("failed to store a message: {e}");
                            b"451 4.3.0 Could not store the message\r\n"
                        }
                    }
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        w.write_all(reply).await?;
    }
}

/// Splits a raw message into unfolded headers and body.
fn split_message(raw: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = match raw.find("\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (raw, ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (headers, body)
}

fn decode_quoted_printable(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1..i + 3) == Some(b"\r\n") => i += 3,
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'=');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes an RFC 2047 encoded word (`=?utf-8?b?...?=` / `?q?`) in a header, if it is one.
fn decode_header(v: &str) -> String {
    let mut out = String::new();
    for word in v.split(' ') {
        let decoded = word.strip_prefix("=?").and_then(|w| w.strip_suffix("?=")).and_then(|w| {
            let mut parts = w.splitn(3, '?');
            let (_charset, enc, text) = (parts.next()?, parts.next()?, parts.next()?);
            match enc.to_ascii_lowercase().as_str() {
                "b" => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                "q" => Some(decode_quoted_printable(&text.replace('_', " "))),
                _ => None,
            }
        });
        match decoded {
            // Adjacent encoded words are joined without the space between them.
            Some(d) => out.push_str(&d),
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
    }
    out
}

impl StoredMessage {
    pub fn view(&self) -> MessageView {
        let (headers, body) = split_message(&self.raw);
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let text = match get("content-transfer-encoding").map(|e| e.to_ascii_lowercase()).as_deref()
        {
            Some("quoted-printable") => decode_quoted_printable(body),
            Some("base64") => {
                let compact: String = body.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|_| body.to_owned())
            }
            _ => body.to_owned(),
        };
        MessageView {
            id: self.id.clone(),
            received_at_ms: self.received_at_ms,
            envelope_from: self.envelope_from.clone(),
            envelope_to: self.envelope_to.clone(),
            subject: get("subject").map(|s| decode_header(&s)),
            from: get("from"),
            to: get("to"),
            message_id: get("message-id"),
            text,
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    /// Only messages to this envelope recipient.
    to: Option<String>,
}

async fn list_messages(
    State(mb): State<Arc<Mailbox>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let all = mb
        .list()
        .map_err(|e| ApiError::internal(anyhow::Error::new(e).context("read messages")))?;
    let messages = all
        .iter()
        .filter(|m| {
            q.to.as_ref().is_none_or(|to| m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
        })
        .map(StoredMessage::view)
        .collect();
    Ok(Json(MessageList { messages }))
}

async fn raw_message(
    State(mb): State<Arc<Mailbox>>,
    UrlPath(id): UrlPath<String>,
) -> Result<String, ApiError> {
    let all = mb
        .list()
        .map_err(|e| ApiError::internal(anyhow::Error::new(e).context("read messages")))?;
    all.into_iter()
        .find(|m| m.id == id)
        .map(|m| m.raw)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such message"))
}

async fn clear_messages(
    State(mb): State<Arc<Mailbox>>,
) -> Result<axum::http::StatusCode, ApiError> {
    mb.clear().map_err(|e| ApiError::internal(anyhow::Error::new(e).context("clear messages")))?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `GET /messages[?to=addr]`, `DELETE /messages`, `GET /messages/{id}/raw`, `GET /healthz`.
pub fn http_router(mailbox: Arc<Mailbox>) -> Router {
    Router::new()
        .route("/messages", get(list_messages).delete(clear_messages))
        .route("/messages/{id}/raw", get(raw_message))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(mailbox)
}

/// Starts both servers on free ports of 127.0.0.1 (for tests); returns `(smtp, http)`.
pub async fn spawn_local(
    mailbox: Arc<Mailbox>,
) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let smtp = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = (smtp.local_addr()?, http.local_addr()?);
    tokio::spawn(serve_smtp(smtp, mailbox.clone()));
    let app =
        tessera_runtime::http::with_common_layers("mailsink", http_router(mailbox), 64 * 1024);
    tokio::spawn(async move {
        if let Err(e) = tessera_runtime::http::serve(http, app, std::future::pending()).await {
            tracing::error!("mailsink http stopped: {e:#}");
        }
    });
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_mail_clients_encode() {
        assert_eq!(decode_quoted_printable("caf=C3=A9 =\r\nau lait=3D"), "café au lait=");
        assert_eq!(decode_header("=?utf-8?b?Q2Fmw6k=?="), "Café");
        assert_eq!(decode_header("plain words"), "plain words");
        let m = StoredMessage {
            id: "1".into(),
            received_at_ms: 0,
            envelope_from: "a@x".into(),
            envelope_to: vec!["b@y".into()],
            raw: "Subject: Hello\r\n there\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
                .into(),
        };
        let v = m.view();
        assert_eq!(v.subject.as_deref(), Some("Hello there"));
        assert_eq!(v.text, "hi");
    }
}
