//! Emails: what each bus event says to the fan ([`render`], pure), and sending over SMTP
//! ([`SmtpMailer`]).

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tessera_api::bus::{BusEvent, BusEventBody};

/// A rendered email, before it has an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    /// Plain text, ASCII unless an id or currency brings something else.
    pub text: String,
}

/// Whom an email is for: resolved through `Contacts` at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Order(tessera_api::OrderId),
    Customer(tessera_api::CustomerId),
}

/// The email a bus event causes, if any, and whom it goes to. `fan_url` is where the fan's
/// pages are (`https://tickets.example`): emails link to the fan's orders there.
pub fn render(event: &BusEvent, fan_url: &str) -> Option<(Recipient, EmailContent)> {
    let fan_url = fan_url.trim_end_matches('/');
    match &event.body {
        BusEventBody::OrderCompleted { order_id, amount_minor, currency, .. } => {
            let amount = format_amount(*amount_minor, currency);
            Some((
                Recipient::Order(order_id.clone()),
                EmailContent {
                    subject: format!("Your tickets for {} are confirmed", event.event_id),
                    text: format!(
                        "Thank you for your order.\r\n\r\nOrder: {order_id}\r\nEvent: {}\r\nPaid: {amount}\r\n\r\nYour tickets, with the QR code to show at the gate:\r\n{fan_url}/orders/{order_id}\r\n\r\nAll your orders: {fan_url}/orders\r\n",
                        event.event_id
                    ),
                },
            ))
        }
        BusEventBody::HoldExpiring { hold_id, customer_id, expires_at_ms } => Some((
            Recipient::Customer(customer_id.clone()),
            EmailContent {
                subject: format!("Your seats for {} are about to be released", event.event_id),
                text: format!(
                    "Your seats for {} are held for you until {} UTC.\r\n\r\nComplete your checkout before then, or they go back on sale:\r\n{fan_url}/events/{}/checkout?hold={hold_id}\r\n\r\nHold: {hold_id}\r\n",
                    event.event_id,
                    format_utc(*expires_at_ms),
                    event.event_id
                ),
            },
        )),
        _ => None,
    }
}

/// `12.34 EUR` for most currencies; zero-decimal currencies print whole units.
pub fn format_amount(amount_minor: u64, currency: &str) -> String {
    let code = currency.to_ascii_uppercase();
    const ZERO_DECIMAL: &[&str] = &["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"];
    if ZERO_DECIMAL.contains(&code.as_str()) {
        format!("{amount_minor} {code}")
    } else {
        format!("{}.{:02} {code}", amount_minor / 100, amount_minor % 100)
    }
}

/// `2026-11-25 10:15:07` from milliseconds since the Unix epoch (UTC).
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Why an email was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the address is not valid")]
    BadAddress,
    /// The SMTP server refused or could not be reached; worth retrying.
    #[error("smtp delivery failed: {0}")]
    Transport(String),
}

/// Sends emails. [`SmtpMailer`] in production; tests may count instead.
#[async_trait::async_trait]
pub trait Mailer: Send + Sync {
    /// Sends `content` to `to`. `message_id` is stable across retries (`<...@...>`), so a
    /// mail client can drop a duplicate left by a crash between sending and recording it.
    async fn send(
        &self,
        to: &str,
        content: &EmailContent,
        message_id: &str,
    ) -> Result<(), MailError>;
}

/// How to reach the SMTP server (the `[notifications.smtp]` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// `Tessera <tickets@tessera.local>`.
    pub from: String,
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port: 2525,
            from: "Tessera <tickets@tessera.local>".to_owned(),
            timeout_ms: 10_000,
        }
    }
}

/// SMTP through `lettre`. Plain SMTP without TLS: the build carries no TLS stack for
/// lettre, so production points it at a local relay (or enables lettre's TLS features).
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").finish_non_exhaustive()
    }
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> anyhow::Result<Self> {
        let from: Mailbox =
            config.from.parse().map_err(|e| anyhow::anyhow!("parse `from` address: {e}"))?;
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
                .port(config.port)
                .timeout(Some(Duration::from_millis(config.timeout_ms)))
                .build();
        Ok(SmtpMailer { transport, from })
    }
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(
        &self,
        to: &str,
        content: &EmailContent,
        message_id: &str,
    ) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|_| MailError::BadAddress)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject.clone())
            .message_id(Some(message_id.to_owned()))
            .header(ContentType::TEXT_PLAIN)
            .body(content.text.clone())
            .map_err(|_| MailError::BadAddress)?;
        self.transport.send(message).await.map_err(|e| MailError::Transport(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::{CustomerId, EventId, HoldId, OrderId, RegionId};

    fn event(body: BusEventBody) -> BusEvent {
        BusEvent {
            id: "00000001".into(),
            region: RegionId::parse("eu-west").unwrap(),
            event_id: EventId::parse("rock-night").unwrap(),
            at_ms: 0,
            body,
        }
    }

    #[test]
    fn renders_the_confirmation_and_the_expiry_warning() {
        let (to, mail) = render(
            &event(BusEventBody::OrderCompleted {
                order_id: OrderId::parse("o_12345678").unwrap(),
                customer_id: CustomerId::parse("fan-1").unwrap(),
                amount_minor: 12_050,
                currency: "eur".into(),
            }),
            "https://tickets.example/",
        )
        .unwrap();
        assert_eq!(to, Recipient::Order(OrderId::parse("o_12345678").unwrap()));
        assert_eq!(mail.subject, "Your tickets for rock-night are confirmed");
        assert!(mail.text.contains("Paid: 120.50 EUR"), "{}", mail.text);
        assert!(
            mail.text.contains("\r\nhttps://tickets.example/orders/o_12345678\r\n"),
            "the confirmation links to the order's tickets: {}",
            mail.text
        );
        assert!(mail.text.contains("https://tickets.example/orders\r\n"), "{}", mail.text);

        let (to, mail) = render(
            &event(BusEventBody::HoldExpiring {
                hold_id: HoldId::parse("h_12345678").unwrap(),
                customer_id: CustomerId::parse("fan-1").unwrap(),
                expires_at_ms: 1_795_602_907_000,
            }),
            "https://tickets.example",
        )
        .unwrap();
        assert!(
            mail.text
                .contains("https://tickets.example/events/rock-night/checkout?hold=h_12345678"),
            "{}",
            mail.text
        );
        assert_eq!(to, Recipient::Customer(CustomerId::parse("fan-1").unwrap()));
        assert!(mail.text.contains("until 2026-11-25 10:35:07 UTC"), "{}", mail.text);
    }

    #[test]
    fn formats_amounts_and_dates() {
        assert_eq!(format_amount(5, "usd"), "0.05 USD");
        assert_eq!(format_amount(1500, "JPY"), "1500 JPY");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
