//! Identifiers. Every id is a newtype over a validated string so that a value that made it
//! into one has already passed the shape rules below, wherever it came from.
//!
//! | id | shape |
//! |---|---|
//! | `EventId`, `RegionId` | `[a-z0-9][a-z0-9-]{0,63}` |
//! | `SectionId`, `PoolId` | `[A-Za-z0-9_]{1,32}` |
//! | `SeatId` | `<section>-<row>-<number>`: row `[A-Za-z0-9_]{1,8}`, number `1..=9999` |
//! | `HoldId`, `OrderId`, `TicketId`, `QueueTicketId` | prefix + `_` + `[a-z0-9]{8,40}` |
//! | `CustomerId` | `[A-Za-z0-9_.@:+-]{1,128}` |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn check_slug(kind: &'static str, s: &str) -> Result<(), InvalidId> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > 64 {
        return Err(InvalidId { kind, reason: "must be 1 to 64 characters" });
    }
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return Err(InvalidId { kind, reason: "must start with a lowercase letter or digit" });
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err(InvalidId { kind, reason: "may contain only a-z, 0-9 and '-'" });
    }
    Ok(())
}

fn check_word(kind: &'static str, s: &str, max: usize) -> Result<(), InvalidId> {
    if s.is_empty() || s.len() > max {
        return Err(InvalidId { kind, reason: "has the wrong length" });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(InvalidId { kind, reason: "may contain only A-Z, a-z, 0-9 and '_'" });
    }
    Ok(())
}

fn check_prefixed(kind: &'static str, prefix: &str, s: &str) -> Result<(), InvalidId> {
    let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return Err(InvalidId { kind, reason: "has the wrong prefix" });
    };
    if rest.len() < 8 || rest.len() > 40 {
        return Err(InvalidId { kind, reason: "has the wrong length" });
    }
    if !rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(InvalidId { kind, reason: "may contain only a-z and 0-9 after the prefix" });
    }
    Ok(())
}

fn check_customer(s: &str) -> Result<(), InvalidId> {
    let kind = "customer id";
    if s.is_empty() || s.len() > 128 {
        return Err(InvalidId { kind, reason: "must be 1 to 128 characters" });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@:+-".contains(&b)) {
        return Err(InvalidId { kind, reason: "contains a character outside [A-Za-z0-9_.@:+-]" });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let check: fn(&str) -> Result<(), InvalidId> = $check;
                check(s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }
        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// An event (one show on one date).
    EventId, "event id", |s| check_slug("event id", s)
);
string_id!(
    /// A region of core services (`us-east`, `eu-west`).
    RegionId, "region id", |s| check_slug("region id", s)
);
string_id!(
    /// A section of a venue's seat map.
    SectionId, "section id", |s| check_word("section id", s, 32)
);
string_id!(
    /// A general-admission pool.
    PoolId, "pool id", |s| check_word("pool id", s, 32)
);
string_id!(
    /// A seat hold.
    HoldId, "hold id", |s| check_prefixed("hold id", "h", s)
);
string_id!(
    /// An order.
    OrderId, "order id", |s| check_prefixed("order id", "o", s)
);
string_id!(
    /// An issued (sold) ticket.
    TicketId, "ticket id", |s| check_prefixed("ticket id", "t", s)
);
string_id!(
    /// A waiting-room place. (A "hold" is a seat hold; the waiting room issues `QueueTicket`s.)
    QueueTicketId, "queue ticket id", |s| check_prefixed("queue ticket id", "q", s)
);
string_id!(
    /// The subject of a fan's identity token.
    CustomerId, "customer id", check_customer
);

/// A seat: `<section>-<row>-<number>`, e.g. `A-12-7` or `FLOOR_L-C-101`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeatId {
    section: SectionId,
    row: String,
    number: u16,
}

impl SeatId {
    pub fn new(section: SectionId, row: &str, number: u16) -> Result<Self, InvalidId> {
        check_word("seat row", row, 8)?;
        if number == 0 || number > 9999 {
            return Err(InvalidId { kind: "seat number", reason: "must be 1 to 9999" });
        }
        Ok(SeatId { section, row: row.to_owned(), number })
    }
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let kind = "seat id";
        let mut parts = s.split('-');
        let (Some(section), Some(row), Some(number), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidId { kind, reason: "must look like <section>-<row>-<number>" });
        };
        let number: u16 = match number.parse() {
            Ok(n) if number.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(InvalidId { kind, reason: "seat number must be decimal digits" }),
        };
        SeatId::new(SectionId::parse(section)?, row, number)
    }
    pub fn section(&self) -> &SectionId {
        &self.section
    }
    pub fn row(&self) -> &str {
        &self.row
    }
    pub fn number(&self) -> u16 {
        self.number
    }
}

impl FromStr for SeatId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}
impl fmt::Display for SeatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.section, self.row, self.number)
    }
}
impl fmt::Debug for SeatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeatId({self})")
    }
}
impl Serialize for SeatId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for SeatId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Generates an id with the given prefix from 128 random bits (base32, lowercase).
pub fn random_id_string(prefix: &str, random: u128) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    let mut v = random;
    for _ in 0..26 {
        out.push(ALPHABET[(v & 31) as usize] as char);
        v >>= 5;
    }
    out
}

impl HoldId {
    pub fn from_random(random: u128) -> Self {
        HoldId(random_id_string("h", random))
    }
}
impl OrderId {
    pub fn from_random(random: u128) -> Self {
        OrderId(random_id_string("o", random))
    }
}
impl TicketId {
    pub fn from_random(random: u128) -> Self {
        TicketId(random_id_string("t", random))
    }
}
impl QueueTicketId {
    pub fn from_random(random: u128) -> Self {
        QueueTicketId(random_id_string("q", random))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(input: &str, expect: Expect) {
        let got = match SeatId::parse(input) {
            Ok(id) => {
                format!("ok {id} section={} row={} number={}", id.section(), id.row(), id.number())
            }
            Err(e) => format!("err {e}"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn parses_seat_ids() {
        check("A-12-7", expect!["ok A-12-7 section=A row=12 number=7"]);
        check("FLOOR_L-C-101", expect!["ok FLOOR_L-C-101 section=FLOOR_L row=C number=101"]);
        check("A-12", expect!["err invalid seat id: must look like <section>-<row>-<number>"]);
        check("A-12-7-1", expect!["err invalid seat id: must look like <section>-<row>-<number>"]);
        check("A-12-0", expect!["err invalid seat number: must be 1 to 9999"]);
        check("A-12-+7", expect!["err invalid seat id: seat number must be decimal digits"]);
        check("A-1 2-7", expect!["err invalid seat row: may contain only A-Z, a-z, 0-9 and '_'"]);
        check("-1-7", expect!["err invalid section id: has the wrong length"]);
    }

    #[test]
    fn rejects_malformed_slugs() {
        assert!(EventId::parse("summer-fest-2027").is_ok());
        assert!(EventId::parse("Summer").is_err());
        assert!(EventId::parse("-x").is_err());
        assert!(EventId::parse(&"a".repeat(65)).is_err());
        assert!(serde_json::from_str::<EventId>("\"bad id\"").is_err());
    }

    #[test]
    fn random_ids_round_trip() {
        let h = HoldId::from_random(u128::MAX - 12345);
        assert_eq!(HoldId::parse(h.as_str()).unwrap(), h);
        let q = QueueTicketId::from_random(7);
        assert!(q.as_str().starts_with("q_"));
        assert!(OrderId::parse("h_abcdefgh").is_err());
    }
}
