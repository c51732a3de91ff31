//! `tessera`, the operator CLI: inspect, drain and restore regions through a region router,
//! and open, pause and resume sales (which the router forwards to a region's core).
//!
//! ```text
//! tessera regions                      # the regions as the router sees them
//! tessera regions drain eu-west [--force]
//! tessera regions restore eu-west
//! tessera sale open|pause|resume <event_id>
//! tessera events list
//! tessera events show <event_id>
//! ```
//! Global flags: `--router-url` (or `TESSERA_ROUTER_URL`), `--token` (or `TESSERA_TOKEN`,
//! an identity token with the `operator` role), `--json` for machine-readable output.
//!
//! It is a thin HTTP client: every rule (who may drain, when a drain is refused) lives in
//! the router and the core, and their errors are shown as they come.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tessera_api::inventory::{Availability, EventDetail, EventList, EventSummary, SaleState};
use tessera_api::ops::{DrainRequest, RegionList, RegionMode};
use tessera_api::{ApiErrorBody, EventId, RegionId};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "tessera", about = "Operate a Tessera deployment", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Base URL of a region router.
    #[arg(
        long,
        env = "TESSERA_ROUTER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub router_url: String,
    /// Identity token with the operator role.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this long.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect, drain and restore regions.
    Regions {
        #[command(subcommand)]
        action: Option<RegionsCommand>,
    },
    /// Open, pause or resume an on-sale.
    Sale {
        #[command(subcommand)]
        action: SaleCommand,
    },
    /// List events, or show one with its availability.
    Events {
        #[command(subcommand)]
        action: EventsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Every region: mode, health, breaker (the default).
    List,
    /// Send no new traffic to a region; requests in flight there finish.
    Drain {
        region: String,
        /// Drain even if it is the last healthy region (fans then get 503s).
        #[arg(long)]
        force: bool,
    },
    /// Let a drained region take traffic again.
    Restore { region: String },
}

#[derive(Debug, Subcommand)]
pub enum SaleCommand {
    /// Start selling (the waiting room's pre-open fans get their shuffled places).
    Open { event_id: String },
    /// Stop new holds; holds and checkouts in flight complete.
    Pause { event_id: String },
    /// Sell again after a pause.
    Resume { event_id: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    List,
    Show { event_id: String },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error.
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("cannot reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl CliError {
    /// The process exit code: 1 refused or failed, 2 bad usage, 3 unreachable.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { .. } | CliError::Protocol(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
        }
    }
}

/// A small client of the router's API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tessera-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Api { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    /// Sends a request and returns the JSON answer (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| CliError::Unreachable { url, source })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(body) => CliError::Api {
                    status: status.as_u16(),
                    code: body.code.as_str().to_owned(),
                    message: body.message,
                },
                Err(_) => CliError::Api {
                    status: status.as_u16(),
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol(e.to_string()))
    }
}

fn parse<T: DeserializeOwned>(v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Protocol(e.to_string()))
}

fn region_id(raw: &str) -> Result<RegionId, CliError> {
    RegionId::parse(raw).map_err(|e| CliError::Usage(format!("{raw:?} is not a region id: {e}")))
}

fn event_id(raw: &str) -> Result<EventId, CliError> {
    EventId::parse(raw).map_err(|e| CliError::Usage(format!("{raw:?} is not an event id: {e}")))
}

/// Runs a command and returns what to print on stdout.
pub async fn run(cli: &Cli, now_ms: u64) -> Result<String, CliError> {
    let g = &cli.global;
    let api = Api::new(&g.router_url, g.token.clone(), Duration::from_millis(g.timeout_ms))?;
    let json = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    match &cli.command {
        Command::Regions { action } => {
            let answer = match action.as_ref().unwrap_or(&RegionsCommand::List) {
                RegionsCommand::List => {
                    api.call(reqwest::Method::GET, "/v1/ops/regions", None).await?
                }
                RegionsCommand::Drain { region, force } => {
                    let region = region_id(region)?;
                    let body = serde_json::to_value(DrainRequest { force: *force })
                        .map_err(|e| CliError::Protocol(e.to_string()))?;
                    api.call(
                        reqwest::Method::POST,
                        &format!("/v1/ops/regions/{region}/drain"),
                        Some(&body),
                    )
                    .await?
                }
                RegionsCommand::Restore { region } => {
                    let region = region_id(region)?;
                    api.call(
                        reqwest::Method::POST,
                        &format!("/v1/ops/regions/{region}/restore"),
                        None,
                    )
                    .await?
                }
            };
            if g.json {
                return Ok(json(&answer));
            }
            Ok(render_regions(&parse(answer)?, now_ms))
        }
        Command::Sale { action } => {
            let (event, verb) = match action {
                SaleCommand::Open { event_id: e } => (e, "open"),
                SaleCommand::Pause { event_id: e } => (e, "pause"),
                SaleCommand::Resume { event_id: e } => (e, "resume"),
            };
            let event = event_id(event)?;
            let answer = api
                .call(reqwest::Method::POST, &format!("/v1/ops/events/{event}/{verb}"), None)
                .await?;
            if g.json {
                return Ok(json(&answer));
            }
            let summary: EventSummary = parse(answer)?;
            Ok(format!("{}: sale is {}\n", summary.event_id, state_name(summary.state)))
        }
        Command::Events { action: EventsCommand::List } => {
            let answer = api.call(reqwest::Method::GET, "/v1/events", None).await?;
            if g.json {
                return Ok(json(&answer));
            }
            Ok(render_events(&parse(answer)?))
        }
        Command::Events { action: EventsCommand::Show { event_id: raw } } => {
            let event = event_id(raw)?;
            let detail =
                api.call(reqwest::Method::GET, &format!("/v1/events/{event}"), None).await?;
            // Availability is a nice-to-have next to the seat map.
            let availability = api
                .call(reqwest::Method::GET, &format!("/v1/events/{event}/availability"), None)
                .await
                .ok();
            if g.json {
                let mut out = serde_json::Map::new();
                out.insert("event".into(), detail);
                if let Some(a) = availability {
                    out.insert("availability".into(), a);
                }
                return Ok(json(&Value::Object(out)));
            }
            let availability =
                availability.and_then(|a| serde_json::from_value::<Availability>(a).ok());
            Ok(render_event(&parse(detail)?, availability.as_ref()))
        }
    }
}

fn state_name(s: SaleState) -> &'static str {
    match s {
        SaleState::Scheduled => "scheduled",
        SaleState::OnSale => "on sale",
        SaleState::Paused => "paused",
        SaleState::SoldOut => "sold out",
        SaleState::Closed => "closed",
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn render_regions(list: &RegionList, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .regions
        .iter()
        .map(|r| {
            vec![
                r.region.to_string(),
                match r.mode {
                    RegionMode::Active => "active".into(),
                    RegionMode::Draining => "draining".into(),
                },
                if r.healthy { "yes".into() } else { "NO".into() },
                r.breaker.replace('_', "-"),
                r.probe_latency_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
                r.last_heartbeat_ms
                    .map_or("-".into(), |at| format!("{} ms ago", now_ms.saturating_sub(at))),
                r.url.clone(),
            ]
        })
        .collect();
    let mut out =
        table(&["REGION", "MODE", "HEALTHY", "BREAKER", "PROBE MS", "HEARTBEAT", "URL"], &rows);
    let _ = writeln!(out, "state version {}", list.version);
    out
}

pub fn render_events(list: &EventList) -> String {
    let rows: Vec<Vec<String>> = list
        .events
        .iter()
        .map(|e| {
            vec![
                e.event_id.to_string(),
                state_name(e.state).into(),
                e.capacity.to_string(),
                e.starts_at.clone(),
                format!("{} @ {}", e.name, e.venue),
            ]
        })
        .collect();
    table(&["EVENT", "STATE", "CAPACITY", "STARTS", "NAME"], &rows)
}

pub fn render_event(detail: &EventDetail, availability: Option<&Availability>) -> String {
    let e = &detail.event;
    let mut out = String::new();
    let _ = writeln!(out, "{} — {} @ {}", e.event_id, e.name, e.venue);
    let _ = writeln!(
        out,
        "starts {}, sale {}, capacity {}",
        e.starts_at,
        state_name(e.state),
        e.capacity
    );
    let _ = writeln!(
        out,
        "at most {} tickets per fan, holds last {} s, prices in {}",
        e.max_tickets_per_customer, e.hold_ttl_s, e.currency
    );
    let _ = writeln!(out);
    let mut rows = Vec::new();
    for s in &detail.sections {
        let counts = availability
            .and_then(|a| a.sections.iter().find(|x| x.section_id == s.section_id))
            .map(|a| (a.free.to_string(), a.held.to_string(), a.sold.to_string()));
        let (free, held, sold) = counts.unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        rows.push(vec![
            s.section_id.to_string(),
            "seated".into(),
            s.capacity().to_string(),
            free,
            held,
            sold,
            s.name.clone(),
        ]);
    }
    for p in &detail.ga_pools {
        let counts = availability
            .and_then(|a| a.pools.iter().find(|x| x.pool_id == p.pool_id))
            .map(|a| (a.free.to_string(), a.held.to_string(), a.sold.to_string()));
        let (free, held, sold) = counts.unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        rows.push(vec![
            p.pool_id.to_string(),
            "standing".into(),
            p.capacity.to_string(),
            free,
            held,
            sold,
            p.name.clone(),
        ]);
    }
    out.push_str(&table(&["SECTION", "KIND", "CAPACITY", "FREE", "HELD", "SOLD", "NAME"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use tessera_api::ops::RegionStatus;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["tessera", "regions", "drain", "eu-west", "--force", "--json"])
                .unwrap();
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::Regions { action: Some(RegionsCommand::Drain { force: true, .. }) }
        ));
        let cli =
            Cli::try_parse_from(["tessera", "--router-url", "http://r:1", "regions"]).unwrap();
        assert_eq!(cli.global.router_url, "http://r:1");
        assert!(Cli::try_parse_from(["tessera", "sale", "explode", "e1"]).is_err());
    }

    #[test]
    fn renders_regions_as_a_table() {
        let list = RegionList {
            version: 7,
            regions: vec![
                RegionStatus {
                    region: "us-east".parse().unwrap(),
                    url: "http://10.0.0.1:9000".into(),
                    mode: RegionMode::Active,
                    healthy: true,
                    breaker: "closed".into(),
                    last_heartbeat_ms: Some(9_750),
                    probe_latency_ms: Some(1.25),
                },
                RegionStatus {
                    region: "eu-west".parse().unwrap(),
                    url: "http://10.0.1.1:9000".into(),
                    mode: RegionMode::Draining,
                    healthy: false,
                    breaker: "half_open".into(),
                    last_heartbeat_ms: None,
                    probe_latency_ms: None,
                },
            ],
        };
        expect_test::expect![[r#"
            REGION   MODE      HEALTHY  BREAKER    PROBE MS  HEARTBEAT   URL
            us-east  active    yes      closed     1.2       250 ms ago  http://10.0.0.1:9000
            eu-west  draining  NO       half-open  -         -           http://10.0.1.1:9000
            state version 7
        "#]]
        .assert_eq(&render_regions(&list, 10_000));
    }
}
