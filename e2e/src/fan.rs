//! A fan, as a client of the edge: identity token, device, waiting room, holds, checkout.
//! The scenarios drive many of these at once.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// A response: status and JSON body (or `Null`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub served_by: Option<String>,
}

impl Reply {
    pub fn code(&self) -> Option<&str> {
        self.body["code"].as_str()
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Calls an HTTP JSON API.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Self {
        Api { http, base: base.into() }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let retry = req.try_clone();
        let mut resp = req.send().await.with_context(|| format!("call {path}"))?;
        // A challenged request is solved and sent again, as a fan's page does.
        if resp.status().as_u16() == 428 {
            let challenge = resp
                .headers()
                .get("x-tessera-pow-challenge")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let (Some(challenge), Some(retry)) = (challenge, retry) {
                let solved = tokio::task::spawn_blocking({
                    let c = challenge.clone();
                    move || tessera_edge_logic::pow::solve(&c)
                })
                .await?;
                if let Some(nonce) = solved {
                    let answer = format!("{challenge}:{nonce}");
                    resp = retry.header(tessera_api::headers::POW, answer).send().await?;
                }
            }
        }
        let status = resp.status().as_u16();
        let served_by = resp
            .headers()
            .get(tessera_api::headers::SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body, served_by })
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::GET, path, headers, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::POST, path, headers, Some(body)).await
    }

    /// An identity token from the development issuer (`operator` adds the `operator`,
    /// `gate` and `admin` roles). Minting is safe to repeat, so a failed region is simply
    /// asked again.
    pub async fn dev_token(&self, customer: &str, operator: bool) -> anyhow::Result<String> {
        let roles: &[&str] = if operator { &["admin"] } else { &[] };
        self.dev_token_with_roles(customer, operator, roles).await
    }

    /// [`Api::dev_token`] with exactly these extra roles.
    pub async fn dev_token_with_roles(
        &self,
        customer: &str,
        operator: bool,
        roles: &[&str],
    ) -> anyhow::Result<String> {
        let body = json!({"customer_id": customer, "operator": operator, "roles": roles});
        // The first failure says more than the last (a process that crashed on the first
        // request resets it, and refuses every later one).
        let mut failures = Vec::new();
        for _ in 0..10 {
            match self.post("/v1/dev/token", &[], &body).await {
                Ok(r) if r.ok() => {
                    return Ok(r.body["token"].as_str().context("token")?.to_owned());
                }
                Ok(r) if r.status < 500 => {
                    bail!("dev token for {customer}: {} {}", r.status, r.body)
                }
                Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                Err(e) => failures.push(format!("{e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let first = failures.first().cloned().unwrap_or_default();
        let last = failures.last().cloned().unwrap_or_default();
        bail!(
            "dev token for {customer}: {} attempts failed; first: {first}; last: {last}",
            failures.len()
        )
    }
}

/// One fan with an identity and a device.
#[derive(Debug, Clone)]
pub struct Fan {
    pub api: Api,
    pub customer: String,
    pub device: String,
    pub token: String,
    pub ticket: Option<String>,
    pub admission: Option<String>,
}

impl Fan {
    pub async fn new(api: Api, customer: &str) -> anyhow::Result<Self> {
        let token = api.dev_token(customer, false).await?;
        Ok(Self::with_token(api, customer, token))
    }

    /// A fan whose identity token came from elsewhere (an identity provider).
    pub fn with_token(api: Api, customer: &str, token: String) -> Self {
        Fan {
            api,
            customer: customer.to_owned(),
            device: format!("device-of-{customer}"),
            token,
            ticket: None,
            admission: None,
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Joins the waiting room of `event`.
    pub async fn join(&mut self, event: &str) -> anyhow::Result<Reply> {
        let auth = self.auth();
        let nonce = hex::encode(sha2_digest(self.customer.as_bytes()));
        let r = self
            .api
            .post(
                &format!("/v1/events/{event}/queue"),
                &[("authorization", &auth), (tessera_api::headers::DEVICE, &self.device)],
                &json!({"client_nonce": &nonce[..32]}),
            )
            .await?;
        if r.ok() {
            self.ticket = r.body["ticket"].as_str().map(str::to_owned);
        }
        Ok(r)
    }

    /// Polls the waiting room once; keeps the admission token when admitted.
    pub async fn status(&mut self, event: &str) -> anyhow::Result<Reply> {
        let ticket = self.ticket.clone().context("join first")?;
        let auth = self.auth();
        let r = self
            .api
            .get(
                &format!("/v1/events/{event}/queue"),
                &[
                    ("authorization", &auth),
                    (tessera_api::headers::DEVICE, &self.device),
                    (tessera_api::headers::QUEUE_TICKET, &ticket),
                ],
            )
            .await?;
        if let Some(a) = r.body["admission_token"].as_str() {
            self.admission = Some(a.to_owned());
        }
        Ok(r)
    }

    /// A long poll: answers as soon as the fan's state differs from `known`, or after
    /// `wait_s` seconds (as the fan's page does instead of polling).
    pub async fn status_wait(
        &mut self,
        event: &str,
        wait_s: u64,
        known: &str,
    ) -> anyhow::Result<Reply> {
        let ticket = self.ticket.clone().context("join first")?;
        let r = self
            .api
            .get(
                &format!("/v1/events/{event}/queue?wait_s={wait_s}&known={known}"),
                &[
                    (tessera_api::headers::DEVICE, &self.device),
                    (tessera_api::headers::QUEUE_TICKET, &ticket),
                ],
            )
            .await?;
        if let Some(a) = r.body["admission_token"].as_str() {
            self.admission = Some(a.to_owned());
        }
        Ok(r)
    }

    /// Stays on the waiting list for returns (after "sold out"); keeps the re-issued ticket.
    pub async fn waiting_list(&mut self, event: &str) -> anyhow::Result<Reply> {
        let ticket = self.ticket.clone().context("join first")?;
        let auth = self.auth();
        let r = self
            .api
            .call(
                reqwest::Method::POST,
                &format!("/v1/events/{event}/queue/waiting-list"),
                &[
                    ("authorization", &auth),
                    (tessera_api::headers::DEVICE, &self.device),
                    (tessera_api::headers::QUEUE_TICKET, &ticket),
                ],
                None,
            )
            .await?;
        if r.ok()
            && let Some(t) = r.body["ticket"].as_str()
        {
            self.ticket = Some(t.to_owned());
        }
        Ok(r)
    }

    /// Gives the place up.
    pub async fn leave(&self, event: &str) -> anyhow::Result<Reply> {
        let ticket = self.ticket.clone().context("join first")?;
        let auth = self.auth();
        self.api
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/events/{event}/queue"),
                &[
                    ("authorization", &auth),
                    (tessera_api::headers::DEVICE, &self.device),
                    (tessera_api::headers::QUEUE_TICKET, &ticket),
                ],
                None,
            )
            .await
    }

    /// Releases a hold.
    pub async fn release(&self, hold_id: &str) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/holds/{hold_id}"),
                &[("authorization", &auth), (tessera_api::headers::DEVICE, &self.device)],
                None,
            )
            .await
    }

    /// Polls until admitted (or `timeout`).
    pub async fn wait_admitted(&mut self, event: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let r = self.status(event).await?;
            if self.admission.is_some() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("{} not admitted within {timeout:?}: {} {}", self.customer, r.status, r.body);
            }
            // Poll like a fan's page does: about once a second.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }

    fn sale_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("authorization", self.auth()),
            (tessera_api::headers::DEVICE, self.device.clone()),
        ];
        if let Some(a) = &self.admission {
            h.push((tessera_api::headers::ADMISSION, a.clone()));
        }
        h
    }

    pub async fn hold(
        &self,
        event: &str,
        body: &Value,
        key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut h = self.sale_headers();
        if let Some(k) = key {
            h.push((tessera_api::headers::IDEMPOTENCY_KEY, k.to_owned()));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.api.post(&format!("/v1/events/{event}/holds"), &h, body).await
    }

    pub async fn checkout(
        &self,
        hold_id: &str,
        payment_method: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        let mut h = self.sale_headers();
        h.push((tessera_api::headers::IDEMPOTENCY_KEY, key.to_owned()));
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.api
            .post("/v1/orders", &h, &json!({"hold_id": hold_id, "payment_method": payment_method, "email": format!("{}@fans.example", self.customer)}))
            .await
    }

    pub async fn order(&self, order_id: &str) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api.get(&format!("/v1/orders/{order_id}"), &[("authorization", &auth)]).await
    }
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// An operator of the stack.
#[derive(Debug, Clone)]
pub struct Operator {
    pub api: Api,
    pub token: String,
}

impl Operator {
    pub async fn new(api: Api) -> anyhow::Result<Self> {
        let token = api.dev_token("operator-1", true).await?;
        Ok(Operator { api, token })
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub async fn create_event(&self, seat_map: &Value) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api.post("/v1/ops/events", &[("authorization", &auth)], seat_map).await
    }

    pub async fn sale(&self, event: &str, action: &str) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api
            .post(
                &format!("/v1/ops/events/{event}/{action}"),
                &[("authorization", &auth)],
                &json!({}),
            )
            .await
    }

    pub async fn admission_rate(&self, event: &str, rate_per_s: f64) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api
            .call(
                reqwest::Method::PUT,
                &format!("/v1/ops/events/{event}/admission"),
                &[("authorization", &auth)],
                Some(&json!({"rate_per_s": rate_per_s})),
            )
            .await
    }

    pub async fn refund(&self, order_id: &str) -> anyhow::Result<Reply> {
        let auth = self.auth();
        self.api
            .post(
                &format!("/v1/ops/orders/{order_id}/refund"),
                &[("authorization", &auth)],
                &json!({}),
            )
            .await
    }
}
