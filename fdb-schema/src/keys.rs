//! Keys. Every key is `root ‖ pack((subspace, ...))` with the tuple layer; the table in
//! `README.md` lists them. Ids are packed as their strings, numbers as tuple integers, so
//! keys sort the way range reads need (seats of a row by number, expiries by time).

use foundationdb_tuple::{Subspace, TuplePack, Versionstamp};
use tessera_api::{
    CustomerId, EventId, HoldId, OrderId, PoolId, QueueTicketId, RegionId, SeatId, SectionId,
    TicketId,
};

use crate::values::SchemaError;

/// The whole key space under one root. Production uses [`Keyspace::production`]; tests
/// sharing a FoundationDB cluster use their own root.
#[derive(Debug, Clone)]
pub struct Keyspace {
    root: Subspace,
}

/// Which counter of a section or pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Held,
    Sold,
}

impl Tally {
    fn name(self) -> &'static str {
        match self {
            Tally::Held => "held",
            Tally::Sold => "sold",
        }
    }
}

/// Phase part of queue keys.
fn phase_name(pre_open: bool) -> &'static str {
    if pre_open { "pre" } else { "open" }
}

impl Keyspace {
    /// The production root, `("tsr",)`.
    pub fn production() -> Self {
        Keyspace::with_root("tsr")
    }

    pub fn with_root(root: &str) -> Self {
        Keyspace { root: Subspace::all().subspace(&root) }
    }

    fn key<T: TuplePack>(&self, t: &T) -> Vec<u8> {
        // The same bytes as `Subspace::pack`, into a buffer sized for the usual key, so
        // that packing does not grow it several times.
        let root = self.root.bytes();
        let mut out = Vec::with_capacity(root.len() + 64);
        out.extend_from_slice(root);
        foundationdb_tuple::pack_into(t, &mut out);
        out
    }

    fn range<T: TuplePack>(&self, t: &T) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(t).range()
    }

    /// The bytes every key starts with.
    pub fn root_prefix(&self) -> &[u8] {
        self.root.bytes()
    }

    // ---- schema -------------------------------------------------------------------------

    /// `("meta", "schema")` → schema version (little-endian u32).
    pub fn schema_version(&self) -> Vec<u8> {
        self.key(&("meta", "schema"))
    }

    // ---- catalog ------------------------------------------------------------------------

    /// `("ev", event_id)` → `EventRecord`.
    pub fn event(&self, event: &EventId) -> Vec<u8> {
        self.key(&("ev", event.as_str()))
    }
    pub fn events(&self) -> (Vec<u8>, Vec<u8>) {
        self.range(&("ev",))
    }
    pub fn event_of_key(&self, key: &[u8]) -> Result<EventId, SchemaError> {
        let (_, id): (String, String) = self.root.unpack(key).map_err(SchemaError::key)?;
        EventId::parse(&id).map_err(SchemaError::id)
    }

    /// `("sec", event_id, section_id)` → `SectionRecord`.
    pub fn section(&self, event: &EventId, section: &SectionId) -> Vec<u8> {
        self.key(&("sec", event.as_str(), section.as_str()))
    }
    pub fn sections(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("sec", event.as_str()))
    }

    /// `("pool", event_id, pool_id)` → `PoolRecord`.
    pub fn pool(&self, event: &EventId, pool: &PoolId) -> Vec<u8> {
        self.key(&("pool", event.as_str(), pool.as_str()))
    }
    pub fn pools(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("pool", event.as_str()))
    }

    // ---- seats --------------------------------------------------------------------------

    /// `("seat", event_id, section_id, row, number)` → [`crate::SeatState`].
    pub fn seat(&self, event: &EventId, seat: &SeatId) -> Vec<u8> {
        self.key(&(
            "seat",
            event.as_str(),
            seat.section().as_str(),
            seat.row(),
            i64::from(seat.number()),
        ))
    }
    /// Every seat of a section, ordered by row then number.
    pub fn seats_of_section(&self, event: &EventId, section: &SectionId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("seat", event.as_str(), section.as_str()))
    }
    /// Every seat of one row, ordered by number.
    pub fn seats_of_row(
        &self,
        event: &EventId,
        section: &SectionId,
        row: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        self.range(&("seat", event.as_str(), section.as_str(), row))
    }
    /// Every seat of an event.
    pub fn seats_of_event(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("seat", event.as_str()))
    }
    /// The seat a seat key names.
    pub fn seat_of_key(&self, key: &[u8]) -> Result<(EventId, SeatId), SchemaError> {
        let (_, event, section, row, number): (String, String, String, String, i64) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        let number = u16::try_from(number)
            .map_err(|_| SchemaError::Key("seat number out of range".into()))?;
        let section = SectionId::parse(&section).map_err(SchemaError::id)?;
        Ok((
            EventId::parse(&event).map_err(SchemaError::id)?,
            SeatId::new(section, &row, number).map_err(SchemaError::id)?,
        ))
    }

    // ---- general admission --------------------------------------------------------------

    /// `("gas", event_id, pool_id, shard)` → places taken in this shard (little-endian i64).
    /// A pool's capacity is split over its shards (`PoolRecord::shard_capacity`), so that
    /// concurrent holds on one pool rarely touch the same key.
    pub fn ga_shard(&self, event: &EventId, pool: &PoolId, shard: u16) -> Vec<u8> {
        self.key(&("gas", event.as_str(), pool.as_str(), i64::from(shard)))
    }
    pub fn ga_shards(&self, event: &EventId, pool: &PoolId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("gas", event.as_str(), pool.as_str()))
    }
    pub fn ga_shard_of_key(&self, key: &[u8]) -> Result<u16, SchemaError> {
        let (_, _, _, shard): (String, String, String, i64) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        u16::try_from(shard).map_err(|_| SchemaError::Key("shard out of range".into()))
    }

    // ---- availability tallies -----------------------------------------------------------

    /// `("tally", event_id, "s"|"p", section_or_pool, "held"|"sold")` → little-endian i64,
    /// changed only with atomic adds (never read inside a hold, so never a hot conflict).
    pub fn section_tally(&self, event: &EventId, section: &SectionId, tally: Tally) -> Vec<u8> {
        self.key(&("tally", event.as_str(), "s", section.as_str(), tally.name()))
    }
    pub fn pool_tally(&self, event: &EventId, pool: &PoolId, tally: Tally) -> Vec<u8> {
        self.key(&("tally", event.as_str(), "p", pool.as_str(), tally.name()))
    }
    pub fn tallies(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("tally", event.as_str()))
    }
    /// `(kind, id, tally)` of a tally key: kind `s` (section) or `p` (pool).
    pub fn tally_of_key(&self, key: &[u8]) -> Result<(String, String, Tally), SchemaError> {
        let (_, _, kind, id, tally): (String, String, String, String, String) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        let tally = match tally.as_str() {
            "held" => Tally::Held,
            "sold" => Tally::Sold,
            _ => return Err(SchemaError::Key(format!("unknown tally {tally}"))),
        };
        Ok((kind, id, tally))
    }

    // ---- holds --------------------------------------------------------------------------

    /// `("hold", hold_id)` → `HoldRecord`.
    pub fn hold(&self, hold: &HoldId) -> Vec<u8> {
        self.key(&("hold", hold.as_str()))
    }
    /// Every hold record (audits and tools; no request reads it).
    pub fn holds(&self) -> (Vec<u8>, Vec<u8>) {
        self.range(&("hold",))
    }

    /// `("hexp", expires_at_ms, hold_id)` → empty. The sweeper's index of hold deadlines.
    pub fn hold_expiry(&self, expires_at_ms: u64, hold: &HoldId) -> Vec<u8> {
        self.key(&("hexp", expires_at_ms as i64, hold.as_str()))
    }
    /// Deadlines strictly before `now_ms`.
    pub fn hold_expiries_before(&self, now_ms: u64) -> (Vec<u8>, Vec<u8>) {
        let (begin, _) = self.range(&("hexp",));
        (begin, self.key(&("hexp", now_ms as i64)))
    }
    pub fn hold_of_expiry_key(&self, key: &[u8]) -> Result<(u64, HoldId), SchemaError> {
        let (_, at, hold): (String, i64, String) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        Ok((at as u64, HoldId::parse(&hold).map_err(SchemaError::id)?))
    }

    /// `("cev", event_id, customer_id)` → seats the customer holds or bought for the event
    /// (little-endian i64), for the per-customer limit.
    pub fn customer_tally(&self, event: &EventId, customer: &CustomerId) -> Vec<u8> {
        self.key(&("cev", event.as_str(), customer.as_str()))
    }

    // ---- orders, payments and tickets ---------------------------------------------------

    /// `("ord", order_id)` → `OrderRecord`.
    pub fn order(&self, order: &OrderId) -> Vec<u8> {
        self.key(&("ord", order.as_str()))
    }
    /// `("cord", customer_id, order_id)` → empty: a customer's orders.
    pub fn customer_order(&self, customer: &CustomerId, order: &OrderId) -> Vec<u8> {
        self.key(&("cord", customer.as_str(), order.as_str()))
    }
    pub fn customer_orders(&self, customer: &CustomerId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("cord", customer.as_str()))
    }
    pub fn order_of_customer_key(&self, key: &[u8]) -> Result<OrderId, SchemaError> {
        let (_, _, order): (String, String, String) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        OrderId::parse(&order).map_err(SchemaError::id)
    }
    /// `("hord", hold_id)` → the order id that checkout created for this hold.
    pub fn hold_order(&self, hold: &HoldId) -> Vec<u8> {
        self.key(&("hord", hold.as_str()))
    }
    /// `("opend", order_id)` → empty: orders whose payment outcome is not settled yet, for
    /// the reconciler.
    pub fn pending_order(&self, order: &OrderId) -> Vec<u8> {
        self.key(&("opend", order.as_str()))
    }
    pub fn pending_orders(&self) -> (Vec<u8>, Vec<u8>) {
        self.range(&("opend",))
    }
    pub fn order_of_pending_key(&self, key: &[u8]) -> Result<OrderId, SchemaError> {
        let (_, order): (String, String) = self.root.unpack(key).map_err(SchemaError::key)?;
        OrderId::parse(&order).map_err(SchemaError::id)
    }

    /// `("tkt", ticket_id)` → `TicketRecord`.
    pub fn ticket(&self, ticket: &TicketId) -> Vec<u8> {
        self.key(&("tkt", ticket.as_str()))
    }

    /// `("idem", scope, customer_id, key)` → `IdempotencyRecord`.
    pub fn idempotency(&self, scope: &str, customer: &CustomerId, key: &str) -> Vec<u8> {
        self.key(&("idem", scope, customer.as_str(), key))
    }

    // ---- outbox -------------------------------------------------------------------------

    /// `("out", region, <versionstamp>)` → `OutboxRecord`, as the parameter of a
    /// `SetVersionstampedKey` (placeholder + 4-byte offset). `user_version` orders several
    /// entries of one transaction.
    pub fn outbox_entry_versionstamped(&self, region: &RegionId, user_version: u16) -> Vec<u8> {
        self.root.pack_with_versionstamp(&(
            "out",
            region.as_str(),
            Versionstamp::incomplete(user_version),
        ))
    }
    pub fn outbox(&self, region: &RegionId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("out", region.as_str()))
    }
    /// The 12-byte versionstamp (10 commit + 2 user bytes) of an outbox key.
    pub fn outbox_stamp_of_key(&self, key: &[u8]) -> Result<[u8; 12], SchemaError> {
        let (_, _, stamp): (String, String, Versionstamp) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        Ok(*stamp.as_bytes())
    }
    /// `("olease", region)` → `LeaseRecord`: which relay publishes the region's outbox.
    pub fn outbox_lease(&self, region: &RegionId) -> Vec<u8> {
        self.key(&("olease", region.as_str()))
    }

    // ---- waiting room -------------------------------------------------------------------

    /// `("qc", event_id, customer_id)` → `QueueRecord`: a customer's one place per event.
    pub fn queue_customer(&self, event: &EventId, customer: &CustomerId) -> Vec<u8> {
        self.key(&("qc", event.as_str(), customer.as_str()))
    }
    /// `("qpre", event_id, ticket_id)` → `QueueRecord` of a fan who joined before opening.
    pub fn queue_pre_open(&self, event: &EventId, ticket: &QueueTicketId) -> Vec<u8> {
        self.key(&("qpre", event.as_str(), ticket.as_str()))
    }
    pub fn queue_pre_open_all(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("qpre", event.as_str()))
    }
    /// `("qopen", event_id, <versionstamp>)` → `QueueRecord`, versionstamped: commit order
    /// is arrival order.
    pub fn queue_open_versionstamped(&self, event: &EventId) -> Vec<u8> {
        self.root.pack_with_versionstamp(&("qopen", event.as_str(), Versionstamp::incomplete(0)))
    }
    pub fn queue_open_all(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("qopen", event.as_str()))
    }
    pub fn queue_open_stamp_of_key(&self, key: &[u8]) -> Result<[u8; 12], SchemaError> {
        let (_, _, stamp): (String, String, Versionstamp) =
            self.root.unpack(key).map_err(SchemaError::key)?;
        Ok(*stamp.as_bytes())
    }
    /// The `qopen` key for a known versionstamp.
    pub fn queue_open_at(&self, event: &EventId, stamp: [u8; 12]) -> Vec<u8> {
        let mut tr = [0u8; 10];
        tr.copy_from_slice(&stamp[..10]);
        let user = u16::from_be_bytes([stamp[10], stamp[11]]);
        self.key(&("qopen", event.as_str(), Versionstamp::complete(tr, user)))
    }
    /// `("qn", event_id, "pre"|"open")` → fans who joined in that phase (little-endian i64).
    pub fn queue_count(&self, event: &EventId, pre_open: bool) -> Vec<u8> {
        self.key(&("qn", event.as_str(), phase_name(pre_open)))
    }
    /// `("qadm", event_id)` → `AdmissionRecord`: the admission controller's durable state.
    pub fn queue_admission(&self, event: &EventId) -> Vec<u8> {
        self.key(&("qadm", event.as_str()))
    }
    /// `("qlog", event_id, <versionstamp>)` → `QueueLogRecord`, versionstamped: what fans
    /// did with their places and admissions, and the admission controller's progress, in
    /// commit order. The controller reads it as it grows; a successor replays it.
    pub fn queue_log_versionstamped(&self, event: &EventId, user_version: u16) -> Vec<u8> {
        self.root.pack_with_versionstamp(&(
            "qlog",
            event.as_str(),
            Versionstamp::incomplete(user_version),
        ))
    }
    pub fn queue_log_all(&self, event: &EventId) -> (Vec<u8>, Vec<u8>) {
        self.range(&("qlog", event.as_str()))
    }
    /// `("qgb", event_id, ticket_id)` → empty: this admission already gave its place back
    /// once (a failed hold), so another failure with it logs nothing.
    pub fn queue_gave_back(&self, event: &EventId, ticket: &QueueTicketId) -> Vec<u8> {
        self.key(&("qgb", event.as_str(), ticket.as_str()))
    }

    /// `("contact", customer_id)` → the customer's email (UTF-8), from their identity
    /// token, for notifications. Never logged.
    pub fn contact(&self, customer: &CustomerId) -> Vec<u8> {
        self.key(&("contact", customer.as_str()))
    }

    /// `("lease", name)` → `LeaseRecord`: single-driver background work across regions
    /// (`admission`).
    pub fn lease(&self, name: &str) -> Vec<u8> {
        self.key(&("lease", name))
    }

    /// Events whose admission state exists.
    pub fn queue_admissions(&self) -> (Vec<u8>, Vec<u8>) {
        self.range(&("qadm",))
    }

    // ---- payment provider webhooks -------------------------------------------------------

    /// `("whk", signed_at_s, provider_event_id)` → empty: a webhook delivery accepted once.
    /// Keyed by the signature's timestamp so deliveries older than the tolerance (which
    /// the signature check refuses anyway) can be cleared as a range.
    pub fn webhook_delivery(&self, signed_at_s: u64, provider_event_id: &str) -> Vec<u8> {
        self.key(&("whk", signed_at_s as i64, provider_event_id))
    }
    /// Deliveries signed strictly before `signed_at_s`.
    pub fn webhook_deliveries_before(&self, signed_at_s: u64) -> (Vec<u8>, Vec<u8>) {
        let (begin, _) = self.range(&("whk",));
        (begin, self.key(&("whk", signed_at_s as i64)))
    }

    // ---- admission ----------------------------------------------------------------------

    /// `("adm", event_id, queue_ticket_id)` → `AdmissionUse`: the one hold an admission
    /// was used for, written in that hold's transaction.
    pub fn admission_use(&self, event: &EventId, ticket: &QueueTicketId) -> Vec<u8> {
        self.key(&("adm", event.as_str(), ticket.as_str()))
    }

    // ---- notifications ------------------------------------------------------------------

    /// `("note", consumer, bus_event_id)` → empty: a bus event this consumer already applied.
    pub fn consumed(&self, consumer: &str, bus_event_id: &str) -> Vec<u8> {
        self.key(&("note", consumer, bus_event_id))
    }
    pub fn consumed_all(&self, consumer: &str) -> (Vec<u8>, Vec<u8>) {
        self.range(&("note", consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn seat_keys_sort_by_row_then_number() {
        let ks = Keyspace::production();
        let ev = EventId::parse("e1").unwrap();
        let a = |s: &str| ks.seat(&ev, &SeatId::parse(s).unwrap());
        assert!(a("A-1-2") < a("A-1-10"), "numbers must sort numerically");
        assert!(a("A-1-10") < a("A-2-1"));
        let (b, e) = ks.seats_of_row(&ev, &SectionId::parse("A").unwrap(), "1");
        assert!(b < a("A-1-1") && a("A-1-9999") < e);
        assert!(a("A-10-1") >= e || a("A-10-1") < b, "row 10 must not fall in row 1's range");
        let (ev2, seat) = ks.seat_of_key(&a("B_2-C-17")).unwrap();
        assert_eq!((ev2.as_str(), seat.to_string().as_str()), ("e1", "B_2-C-17"));
    }

    #[test]
    fn keys_are_stable() {
        // These bytes are on disk and in FoundationDB: changing them breaks every store.
        let ks = Keyspace::production();
        let ev = EventId::parse("e1").unwrap();
        expect!["02747372000265760002653100"].assert_eq(&hex(&ks.event(&ev)));
        expect!["0274737200027365617400026531000241000231001507"]
            .assert_eq(&hex(&ks.seat(&ev, &SeatId::parse("A-1-7").unwrap())));
    }

    #[test]
    fn keys_are_packed_as_the_tuple_layer_packs_them() {
        let ks = Keyspace::production();
        let ev = EventId::parse("e1").unwrap();
        let h = HoldId::parse("h_abcdefghij").unwrap();
        let root = Subspace::all().subspace(&"tsr");
        assert_eq!(ks.hold(&h), root.pack(&("hold", h.as_str())));
        let at = 1_796_000_000_123i64;
        assert_eq!(ks.hold_expiry(at as u64, &h), root.pack(&("hexp", at, h.as_str())));
        let seat = SeatId::parse("A_1-B2-9999").unwrap();
        assert_eq!(ks.seat(&ev, &seat), root.pack(&("seat", "e1", "A_1", "B2", 9999i64)));
    }

    #[test]
    fn expiry_ranges_select_deadlines_before_now() {
        let ks = Keyspace::production();
        let h = HoldId::parse("h_aaaaaaaaaa").unwrap();
        let (b, e) = ks.hold_expiries_before(1_000);
        let k999 = ks.hold_expiry(999, &h);
        let k1000 = ks.hold_expiry(1_000, &h);
        assert!(b <= k999 && k999 < e);
        assert!(k1000 >= e);
        assert_eq!(ks.hold_of_expiry_key(&k999).unwrap(), (999, h));
    }

    #[test]
    fn versionstamped_outbox_keys_carry_their_offset() {
        let ks = Keyspace::production();
        let region = RegionId::parse("us-east").unwrap();
        let k = ks.outbox_entry_versionstamped(&region, 3);
        let offset = u32::from_le_bytes(k[k.len() - 4..].try_into().unwrap()) as usize;
        assert_eq!(&k[offset..offset + 10], &[0xff; 10]);
        // Filled in the way the store does it, the key unpacks to the stamp.
        let mut filled = k[..k.len() - 4].to_vec();
        filled[offset..offset + 10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 1]);
        let stamp = ks.outbox_stamp_of_key(&filled).unwrap();
        assert_eq!(stamp, [0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0, 3]);
        let (b, e) = ks.outbox(&region);
        assert!(b < filled && filled < e);
    }
}
