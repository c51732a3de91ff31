//! The admission controller: the pure algorithm the core runs a few times a second to turn
//! the queue, what fans did with their admissions, the remaining inventory, core health and
//! the operator's rate into the [`AdmissionWatermark`] it publishes on
//! `tessera.admission.<event_id>`.
//!
//! The queue is one order of places: pre-open places in lottery order (drawn at opening),
//! then open-phase places in arrival order. A place's *position* is its index in that
//! order. The controller admits by moving lines along it:
//!
//! - the **main line**: every place before it is admitted (except fans who left first);
//! - while **sold out** (what is left is spoken for by admitted fans), the main line stops
//!   and the **waiting-list line** moves instead: only places whose fans chose the waiting
//!   list are admitted, in queue order. When the waiting list has nobody left to admit and
//!   places are still there, the main line moves again.
//!
//! Rules:
//! - Nobody is admitted unless the sale is on. Pre-open places go first (the seed must
//!   have been revealed and must match the commitment), then open-phase places.
//! - The rate is the operator's, scaled down by core health (1.0 healthy, 0.0 down).
//! - An admission is *outstanding* from the moment a line passes its place until it is
//!   used for a hold, given back (a hold with it failed for lack of seats), its fan leaves,
//!   or its window (`admission_ttl_ms` + `admission_grace_ms`) ends unused. What is really
//!   left for the queue is `remaining` (neither sold nor held) minus what outstanding
//!   admissions will take (`outstanding` × observed tickets per order); fans are admitted
//!   while that is at least one place. So every place that comes back (an admission
//!   given back or expired, a hold released or expired) goes to the next fan in line.
//! - When nothing is left for the queue, the watermark says `sold_out` and every waiting
//!   fan is told so, with the choice of the waiting list.
//!
//! The controller records its own progress as [`Progress`] entries (lines moved,
//! admissions expired), which the core appends to the event's queue log with the fans'
//! [`FanEvent`]s; a successor replays the log and resumes with the same state, so
//! admission never moves backwards and no admission is forgotten.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use tessera_api::inventory::SaleState;
use tessera_api::queue::{AdmissionWatermark, EstimateInputs, QueueLine, QueuePhase};
use tessera_api::{EventId, QueueTicketId};

use crate::lottery;

/// Tunables of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// How long an admission token lives.
    pub admission_ttl_ms: u64,
    /// Time added to the token's life before an unused admission is taken back (the edge
    /// issues the token on the fan's first status request after admission).
    pub admission_grace_ms: u64,
    /// Places allowed per remaining place (1.0: never admit past what is left).
    pub overbook: f64,
    /// Largest burst, in seconds of rate, that can accumulate (after a pause, say).
    pub burst_s: f64,
    /// Tickets per order assumed before any hold was seen (weighted as
    /// [`PRIOR_WEIGHT`] holds).
    pub tickets_per_order_prior: f64,
    /// The window rates are measured over.
    pub rate_window_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            admission_ttl_ms: 10 * 60 * 1000,
            admission_grace_ms: 30_000,
            overbook: 1.0,
            burst_s: 1.0,
            tickets_per_order_prior: 2.0,
            rate_window_ms: 60_000,
        }
    }
}

/// How many observations a prior is worth.
pub const PRIOR_WEIGHT: f64 = 2.0;
/// Width of the spells the rate range is measured over.
const SPELL_MS: u64 = 5_000;
/// How long a fan's event waits for its place to be read before it is dropped.
const PENDING_MAX_MS: u64 = 5 * 60 * 1000;

/// What the core measures before each tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerInput {
    pub now_ms: u64,
    pub state: SaleState,
    /// Fans who joined before opening (before the draw; after it the controller knows).
    pub pre_open_count: u64,
    /// Seats (or GA places) neither sold nor held.
    pub remaining: u64,
    /// Seats (or GA places) held and sold right now.
    pub held: u64,
    pub sold: u64,
    /// 1.0 when the core is healthy, down to 0.0 when it cannot take load.
    pub core_health: f64,
    /// The operator's admission rate (fans per second).
    pub operator_rate_per_s: f64,
}

/// Which place a fan's event is about, as their ticket says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRef {
    pub ticket_id: QueueTicketId,
    pub phase: QueuePhase,
    /// Open-phase rank (versionstamp hex).
    pub rank: Option<String>,
}

/// What a fan did with their place or admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanEvent {
    /// A hold was made with the admission (`seats` places).
    Used { seats: u32 },
    /// A hold with the admission failed for lack of places: the place goes back at once
    /// (the token stays valid for another try until it expires).
    GaveBack,
    /// The fan left the waiting room.
    Left,
    /// The fan chose the waiting list for returns.
    WaitingList,
}

/// The controller's own progress, appended to the queue log so a successor replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Lines moved at `at_ms`: the main line from `main_from` to `main_to`, the waiting
    /// list admitted `waiting_list` (positions) and its line is now `waiting_list_line`;
    /// `sold_out` says whether the sale is sold out after this tick.
    Admitted {
        at_ms: u64,
        main_from: u64,
        main_to: u64,
        waiting_list: Vec<u64>,
        waiting_list_line: u64,
        sold_out: bool,
    },
    /// Admissions whose window ended unused (positions).
    Expired { at_ms: u64, positions: Vec<u64> },
}

/// Why revealing a seed failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevealError {
    #[error("seed does not match the published commitment")]
    CommitmentMismatch,
}

/// An admission in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    deadline_ms: u64,
    /// A hold with it failed: no longer counted as outstanding, still usable.
    gave_back: bool,
}

/// Running mean and variance (Welford) with a prior.
#[derive(Debug, Clone, Default)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }
    fn mean_with_prior(&self, prior: f64) -> f64 {
        (self.mean * self.n + prior * PRIOR_WEIGHT) / (self.n + PRIOR_WEIGHT)
    }
    fn var(&self) -> f64 {
        if self.n < 2.0 { 0.0 } else { self.m2 / self.n }
    }
}

/// The controller of one event. Keep one per event in the core; feed it `tick`s.
#[derive(Debug, Clone)]
pub struct AdmissionController {
    event_id: EventId,
    config: ControllerConfig,
    commitment: String,
    seed: Option<String>,
    /// Pre-open places in lottery order (filled at reveal): (rank, ticket).
    pre_open: Vec<(u64, QueueTicketId)>,
    /// Open-phase places in arrival order: (rank, ticket).
    open: Vec<(String, QueueTicketId)>,
    /// Every position before it has been passed by the main line.
    main_line: u64,
    /// Waiting-list positions before it are admitted.
    waiting_list_line: u64,
    sold_out: bool,
    /// The main line when the sale first sold out (for the waiting list's share).
    first_sold_out_at: Option<u64>,
    left: HashSet<u64>,
    waiting_list: BTreeSet<u64>,
    admissions: HashMap<u64, Admission>,
    /// Admissions in the order they were given, for expiry (deadlines never decrease).
    deadlines: VecDeque<(u64, u64)>,
    outstanding: u64,
    /// Fans' events whose place has not been read yet, with when they arrived.
    pending: Vec<(TicketRef, FanEvent, u64)>,
    /// (time, main line, waiting-list line) whenever a line moved, for the expired lines.
    line_history: VecDeque<(u64, u64, u64)>,
    version: u64,
    budget: f64,
    last_tick_ms: Option<u64>,
    // --- measurements ---
    admitted_log: VecDeque<(u64, u64)>,
    first_admission_ms: Option<u64>,
    returned_log: VecDeque<(u64, u64)>,
    tickets: Moments,
    /// Admissions used for a hold / finished unused (expired, left while admitted).
    used: u64,
    unused: u64,
    /// Places held by holds made since the last tick (from `Used` events).
    entered_since_tick: u64,
    last_held_sold: Option<(u64, u64)>,
    returned_total: u64,
    sold_total: u64,
    last_rate_per_s: f64,
}

impl AdmissionController {
    /// A controller for an event whose seed commitment is `commitment` (hex).
    pub fn new(event_id: EventId, commitment: String, config: ControllerConfig) -> Self {
        AdmissionController {
            event_id,
            config,
            commitment,
            seed: None,
            pre_open: Vec::new(),
            open: Vec::new(),
            main_line: 0,
            waiting_list_line: 0,
            sold_out: false,
            first_sold_out_at: None,
            left: HashSet::new(),
            waiting_list: BTreeSet::new(),
            admissions: HashMap::new(),
            deadlines: VecDeque::new(),
            outstanding: 0,
            pending: Vec::new(),
            line_history: VecDeque::new(),
            version: 0,
            budget: 0.0,
            last_tick_ms: None,
            admitted_log: VecDeque::new(),
            first_admission_ms: None,
            returned_log: VecDeque::new(),
            tickets: Moments::default(),
            used: 0,
            unused: 0,
            entered_since_tick: 0,
            last_held_sold: None,
            returned_total: 0,
            sold_total: 0,
            last_rate_per_s: 0.0,
        }
    }

    /// Reveals the seed at opening and draws the pre-open order from the registered
    /// ticket ids. Returns the ids in admission order (for the core's records).
    pub fn reveal(
        &mut self,
        seed_hex: &str,
        pre_open_tickets: &[QueueTicketId],
    ) -> Result<Vec<QueueTicketId>, RevealError> {
        if !lottery::verify_seed(&self.commitment, seed_hex) {
            return Err(RevealError::CommitmentMismatch);
        }
        let mut ranked: Vec<(u64, QueueTicketId)> = pre_open_tickets
            .iter()
            .filter_map(|t| lottery::rank_for(seed_hex, &self.event_id, t).map(|r| (r, t.clone())))
            .collect();
        ranked.sort();
        ranked.dedup();
        self.pre_open = ranked;
        self.seed = Some(seed_hex.to_owned());
        Ok(self.pre_open.iter().map(|(_, t)| t.clone()).collect())
    }

    /// Whether the pre-open order has been drawn.
    pub fn revealed(&self) -> bool {
        self.seed.is_some()
    }

    /// Appends an open-phase place (in arrival order: ranks must ascend).
    pub fn push_open(&mut self, rank: String, ticket_id: QueueTicketId) {
        debug_assert!(self.open.last().is_none_or(|(r, _)| *r < rank));
        self.open.push((rank, ticket_id));
    }

    /// Open-phase places read so far.
    pub fn open_count(&self) -> u64 {
        self.open.len() as u64
    }

    fn pre_open_total(&self) -> u64 {
        self.pre_open.len() as u64
    }

    fn total(&self) -> u64 {
        self.pre_open_total() + self.open_count()
    }

    /// The ticket at `position`.
    pub fn ticket_at(&self, position: u64) -> Option<&QueueTicketId> {
        let p = self.pre_open_total();
        if position < p {
            self.pre_open.get(position as usize).map(|(_, t)| t)
        } else {
            self.open.get((position - p) as usize).map(|(_, t)| t)
        }
    }

    /// The position of a ticket, if its place has been read.
    pub fn position_of(&self, t: &TicketRef) -> Option<u64> {
        match t.phase {
            QueuePhase::PreOpen => {
                let seed = self.seed.as_deref()?;
                let rank = lottery::rank_for(seed, &self.event_id, &t.ticket_id)?;
                let start = self.pre_open.partition_point(|(r, _)| *r < rank);
                self.pre_open[start..]
                    .iter()
                    .take_while(|(r, _)| *r == rank)
                    .position(|(_, id)| *id == t.ticket_id)
                    .map(|i| (start + i) as u64)
            }
            QueuePhase::Open => {
                let rank = t.rank.as_deref()?;
                let i = self.open.partition_point(|(r, _)| r.as_str() < rank);
                match self.open.get(i) {
                    Some((r, id)) if r == rank && *id == t.ticket_id => {
                        Some(self.pre_open_total() + i as u64)
                    }
                    _ => None,
                }
            }
        }
    }

    /// Whether the admission at `position` is outstanding.
    pub fn is_outstanding(&self, position: u64) -> bool {
        self.admissions.get(&position).is_some_and(|a| !a.gave_back)
    }

    /// Admissions given and not yet used, given back, or expired.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Positions the waiting list holds (admitted or not).
    pub fn waiting_list_len(&self) -> usize {
        self.waiting_list.len()
    }

    /// Whether the sale is sold out (what is left is spoken for).
    pub fn is_sold_out(&self) -> bool {
        self.sold_out
    }

    /// The main line (positions before it have been passed).
    pub fn main_line(&self) -> u64 {
        self.main_line
    }

    fn admit(&mut self, position: u64, now_ms: u64) {
        let deadline_ms = now_ms + self.config.admission_ttl_ms + self.config.admission_grace_ms;
        if self.admissions.insert(position, Admission { deadline_ms, gave_back: false }).is_none() {
            self.outstanding += 1;
            self.deadlines.push_back((deadline_ms, position));
        }
    }

    /// Ends the admission at `position` (if it is in flight); `used` says how.
    fn finish(&mut self, position: u64, used: bool) -> bool {
        let Some(a) = self.admissions.remove(&position) else { return false };
        if !a.gave_back {
            self.outstanding -= 1;
        }
        if used {
            self.used += 1;
        } else {
            self.unused += 1;
        }
        true
    }

    /// Applies what a fan did. Events about places not read yet wait for the next tick.
    pub fn fan_event(&mut self, ticket: &TicketRef, event: FanEvent, at_ms: u64) {
        match self.position_of(ticket) {
            Some(p) => self.apply_fan_event(p, event, at_ms),
            None => self.pending.push((ticket.clone(), event, at_ms)),
        }
    }

    fn apply_fan_event(&mut self, position: u64, event: FanEvent, at_ms: u64) {
        match event {
            FanEvent::Used { seats } => {
                self.tickets.add(f64::from(seats));
                self.entered_since_tick += u64::from(seats);
                self.finish(position, true);
            }
            FanEvent::GaveBack => {
                if let Some(a) = self.admissions.get_mut(&position)
                    && !a.gave_back
                {
                    a.gave_back = true;
                    self.outstanding -= 1;
                }
            }
            FanEvent::Left => {
                self.left.insert(position);
                self.finish(position, false);
            }
            FanEvent::WaitingList => {
                if self.left.contains(&position) || !self.waiting_list.insert(position) {
                    return;
                }
                // A fan ahead of the waiting-list line who chooses it now is admitted at
                // once: the list goes in queue order, and they are earlier in it.
                if position >= self.main_line
                    && position < self.waiting_list_line
                    && !self.admissions.contains_key(&position)
                {
                    self.admit(position, at_ms);
                }
            }
        }
    }

    fn retry_pending(&mut self, now_ms: u64) {
        let pending = std::mem::take(&mut self.pending);
        for (t, e, at) in pending {
            match self.position_of(&t) {
                Some(p) => self.apply_fan_event(p, e, at),
                None if now_ms.saturating_sub(at) < PENDING_MAX_MS => {
                    self.pending.push((t, e, at));
                }
                None => {}
            }
        }
    }

    /// Admissions whose window has ended unused, with their tickets. The core records
    /// them (so the tokens admit no hold any more) and then calls
    /// [`AdmissionController::expire`].
    pub fn due_expiries(&self, now_ms: u64) -> Vec<(u64, TicketRef)> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .filter(|(_, p)| self.admissions.contains_key(p))
            .filter_map(|(_, p)| self.place_at(*p).map(|t| (*p, t)))
            .collect()
    }

    /// The ticket at `position`, with its phase and (open-phase) rank.
    pub fn place_at(&self, position: u64) -> Option<TicketRef> {
        let p = self.pre_open_total();
        if position < p {
            let (_, t) = self.pre_open.get(position as usize)?;
            Some(TicketRef { ticket_id: t.clone(), phase: QueuePhase::PreOpen, rank: None })
        } else {
            let (r, t) = self.open.get((position - p) as usize)?;
            Some(TicketRef { ticket_id: t.clone(), phase: QueuePhase::Open, rank: Some(r.clone()) })
        }
    }

    /// Ends the admissions at `positions` as expired, except those the store found used
    /// (`used`: their `Used` event is on its way in the log). Returns the progress entry
    /// to record.
    pub fn expire(&mut self, positions: &[u64], used: &[u64], now_ms: u64) -> Option<Progress> {
        let mut expired = Vec::new();
        for &p in positions {
            if used.contains(&p) {
                continue;
            }
            if self.finish(p, false) {
                expired.push(p);
            }
        }
        self.trim_deadlines();
        (!expired.is_empty()).then_some(Progress::Expired { at_ms: now_ms, positions: expired })
    }

    fn trim_deadlines(&mut self) {
        while self.deadlines.front().is_some_and(|(_, p)| !self.admissions.contains_key(p)) {
            self.deadlines.pop_front();
        }
    }

    /// Replays a progress entry a predecessor recorded (in log order, with the fans'
    /// events between them), so a successor resumes with the same state.
    pub fn replay(&mut self, progress: &Progress) {
        match progress {
            Progress::Admitted {
                at_ms,
                main_from,
                main_to,
                waiting_list,
                waiting_list_line,
                sold_out,
            } => {
                self.retry_pending(*at_ms);
                // A lost entry leaves a gap: count it as admitted now (later, not earlier).
                let from = (*main_from).min(self.main_line);
                let mut n = 0;
                for p in from..*main_to {
                    if p >= self.main_line
                        && !self.left.contains(&p)
                        && !self.admissions.contains_key(&p)
                    {
                        self.admit(p, *at_ms);
                        n += 1;
                    }
                }
                self.main_line = self.main_line.max(*main_to);
                for &p in waiting_list {
                    if !self.admissions.contains_key(&p) && !self.left.contains(&p) {
                        self.admit(p, *at_ms);
                        n += 1;
                    }
                }
                self.waiting_list_line =
                    self.waiting_list_line.max(*waiting_list_line).max(self.main_line);
                if *sold_out && !self.sold_out {
                    self.first_sold_out_at.get_or_insert(self.main_line);
                }
                self.sold_out = *sold_out;
                self.note_admitted(*at_ms, n);
                self.note_lines(*at_ms);
            }
            Progress::Expired { positions, .. } => {
                for &p in positions {
                    self.finish(p, false);
                }
                self.trim_deadlines();
            }
        }
    }

    /// Restores the watermark's version after a restart (versions never go backwards).
    pub fn restore_version(&mut self, version: u64) {
        self.version = self.version.max(version);
    }

    fn note_admitted(&mut self, at_ms: u64, n: u64) {
        if n > 0 {
            self.admitted_log.push_back((at_ms, n));
            self.first_admission_ms.get_or_insert(at_ms);
        }
    }

    fn note_lines(&mut self, at_ms: u64) {
        let now = (self.main_line, self.waiting_list_line);
        if self.line_history.back().is_none_or(|(_, m, l)| (*m, *l) != now) {
            self.line_history.push_back((at_ms, now.0, now.1));
        }
    }

    fn tickets_per_order(&self) -> f64 {
        self.tickets.mean_with_prior(self.config.tickets_per_order_prior).max(1.0)
    }

    /// The line at `position` in the watermark's form.
    fn line(&self, position: u64) -> QueueLine {
        let p = self.pre_open_total();
        let pre = position.min(p);
        let open = position.saturating_sub(p).min(self.open_count());
        QueueLine {
            pre_open_passed: pre,
            pre_open_threshold: self.pre_open_threshold(pre),
            open_passed: open,
            open_rank: open
                .checked_sub(1)
                .and_then(|i| self.open.get(i as usize))
                .map(|(r, _)| r.clone()),
        }
    }

    fn pre_open_threshold(&self, passed: u64) -> Option<u64> {
        passed.checked_sub(1).and_then(|i| self.pre_open.get(i as usize)).map(|(r, _)| *r)
    }

    /// How many more fans fit in what is really left.
    fn headroom(&self, remaining: u64) -> u64 {
        let tpo = self.tickets_per_order();
        let left = remaining as f64 * self.config.overbook.max(0.0) - self.outstanding as f64 * tpo;
        if left <= 0.0 { 0 } else { (left / tpo - 1e-9).ceil().max(0.0) as u64 }
    }

    fn measure(&mut self, input: &ControllerInput) {
        let window_start = input.now_ms.saturating_sub(self.config.rate_window_ms);
        while self.admitted_log.front().is_some_and(|(t, _)| *t < window_start) {
            self.admitted_log.pop_front();
        }
        while self.returned_log.front().is_some_and(|(t, _)| *t < window_start) {
            self.returned_log.pop_front();
        }
        if let Some((held, sold)) = self.last_held_sold {
            // Places that entered holds, minus what held and sold grew by, came back.
            let grew = (input.held + input.sold) as i128 - (held + sold) as i128;
            let returned = (self.entered_since_tick as i128 - grew).max(0) as u64;
            if returned > 0 {
                self.returned_log.push_back((input.now_ms, returned));
                self.returned_total += returned;
            }
            self.sold_total += input.sold.saturating_sub(sold);
        }
        self.last_held_sold = Some((input.held, input.sold));
        self.entered_since_tick = 0;
    }

    /// Admissions per second over the window: (middle, slowest spell, fastest spell).
    fn admitted_rates(&self, now_ms: u64) -> (f64, f64, f64) {
        let Some(first) = self.first_admission_ms else { return (0.0, 0.0, 0.0) };
        let start = now_ms.saturating_sub(self.config.rate_window_ms).max(first);
        let span_ms = now_ms.saturating_sub(start).max(SPELL_MS);
        let total: u64 = self.admitted_log.iter().map(|(_, n)| n).sum();
        let mid = total as f64 * 1000.0 / span_ms as f64;
        let spells = (span_ms / SPELL_MS).max(1);
        let mut per_spell = vec![0u64; spells as usize];
        for (t, n) in &self.admitted_log {
            let i = (now_ms.saturating_sub(*t) / SPELL_MS).min(spells - 1);
            per_spell[i as usize] += n;
        }
        let rate = |n: u64| n as f64 * 1000.0 / SPELL_MS as f64;
        let lo = per_spell.iter().copied().min().map_or(0.0, rate);
        let hi = per_spell.iter().copied().max().map_or(0.0, rate);
        (mid, lo.min(mid), hi.max(mid))
    }

    fn returned_per_s(&self, now_ms: u64) -> f64 {
        let Some(first) = self.first_admission_ms else { return 0.0 };
        let start = now_ms.saturating_sub(self.config.rate_window_ms).max(first);
        let span_ms = now_ms.saturating_sub(start).max(SPELL_MS);
        let total: u64 = self.returned_log.iter().map(|(_, n)| n).sum();
        total as f64 * 1000.0 / span_ms as f64
    }

    fn estimate(&self, input: &ControllerInput) -> EstimateInputs {
        let (mid, lo, hi) = self.admitted_rates(input.now_ms);
        let finished = (self.used + self.unused) as f64;
        let conversion = (self.used as f64 + PRIOR_WEIGHT) / (finished + PRIOR_WEIGHT);
        let lapse_n = (self.returned_total + self.sold_total) as f64;
        let hold_lapse = if lapse_n > 0.0 { self.returned_total as f64 / lapse_n } else { 0.0 };
        let told = self.first_sold_out_at.map_or(0, |s| self.total().saturating_sub(s)) as f64;
        let waiting_list_share = (self.waiting_list.len() as f64 + 0.5 * PRIOR_WEIGHT)
            / (told.max(self.waiting_list.len() as f64) + PRIOR_WEIGHT);
        EstimateInputs {
            admitted_per_s: mid,
            admitted_per_s_low: lo,
            admitted_per_s_high: hi,
            planned_per_s: self.planned_rate(input),
            returned_per_s: self.returned_per_s(input.now_ms),
            tickets_per_order: self.tickets_per_order(),
            tickets_per_order_var: self.tickets.var(),
            conversion,
            held: input.held,
            hold_lapse,
            waiting_list_share,
        }
    }

    fn planned_rate(&self, input: &ControllerInput) -> f64 {
        let health =
            if input.core_health.is_finite() { input.core_health.clamp(0.0, 1.0) } else { 0.0 };
        let operator = if input.operator_rate_per_s.is_finite() {
            input.operator_rate_per_s.max(0.0)
        } else {
            0.0
        };
        operator * health
    }

    /// The lines as they were `admission_ttl_ms + admission_grace_ms` ago.
    fn expired_lines(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let cutoff =
            now_ms.saturating_sub(self.config.admission_ttl_ms + self.config.admission_grace_ms);
        // Keep the newest entry at or before the cutoff, drop the older ones.
        while self.line_history.len() >= 2 && self.line_history[1].0 <= cutoff {
            self.line_history.pop_front();
        }
        self.line_history.front().filter(|(t, _, _)| *t <= cutoff).map(|(_, m, l)| (*m, *l))
    }

    /// Advances the controller: admits what fits and returns the watermark to publish,
    /// and the progress to record (before publishing) when a line moved.
    pub fn tick(&mut self, input: &ControllerInput) -> (AdmissionWatermark, Option<Progress>) {
        self.retry_pending(input.now_ms);
        self.trim_deadlines();
        self.measure(input);
        let dt_s = match self.last_tick_ms {
            Some(last) => (input.now_ms.saturating_sub(last) as f64 / 1000.0).min(5.0),
            None => 0.0,
        };
        self.last_tick_ms = Some(input.now_ms);
        let rate = self.planned_rate(input);

        let main_from = self.main_line;
        let (was_sold_out, wl_line_from) = (self.sold_out, self.waiting_list_line);
        let mut admitted_wl = Vec::new();
        let mut admitted = 0u64;
        let mut effective_rate = 0.0;
        let on_sale = input.state == SaleState::OnSale && self.seed.is_some();
        if on_sale {
            let headroom = self.headroom(input.remaining);
            self.budget = (self.budget + rate * dt_s).min(rate * self.config.burst_s.max(0.0));
            let mut n = (self.budget.max(0.0).floor() as u64).min(headroom);
            if self.sold_out && headroom > 0 {
                // Places came back: the waiting list first, in queue order.
                let next: Vec<u64> = self
                    .waiting_list
                    .range(self.waiting_list_line.max(self.main_line)..)
                    .copied()
                    .filter(|p| !self.left.contains(p) && !self.admissions.contains_key(p))
                    .take(n as usize + 1)
                    .collect();
                for &p in next.iter().take(n as usize) {
                    self.admit(p, input.now_ms);
                    admitted_wl.push(p);
                    self.waiting_list_line = p + 1;
                }
                n -= admitted_wl.len() as u64;
                admitted += admitted_wl.len() as u64;
                if next.len() <= admitted_wl.len() {
                    // Nobody left on the waiting list: places go in queue order again.
                    self.sold_out = false;
                }
            }
            if !self.sold_out {
                let total = self.total();
                while n > 0 && self.main_line < total {
                    let p = self.main_line;
                    self.main_line += 1;
                    if self.left.contains(&p) || self.admissions.contains_key(&p) {
                        continue;
                    }
                    self.admit(p, input.now_ms);
                    admitted += 1;
                    n -= 1;
                }
                self.waiting_list_line = self.waiting_list_line.max(self.main_line);
            }
            self.budget -= admitted as f64;
            effective_rate = rate;
            if self.headroom(input.remaining) == 0 {
                // The rest is spoken for by fans already admitted.
                if !self.sold_out {
                    self.first_sold_out_at.get_or_insert(self.main_line);
                }
                self.sold_out = true;
                effective_rate = 0.0;
            }
        } else {
            self.budget = 0.0;
        }
        self.note_admitted(input.now_ms, admitted);
        self.note_lines(input.now_ms);
        self.last_rate_per_s = effective_rate;
        self.version += 1;

        let state = match input.state {
            SaleState::OnSale if self.sold_out => SaleState::SoldOut,
            s => s,
        };
        let pre_open_count =
            if self.seed.is_some() { self.pre_open_total() } else { input.pre_open_count };
        let main = self.line(self.main_line);
        let expired = self.expired_lines(input.now_ms);
        let wm = AdmissionWatermark {
            event_id: self.event_id.clone(),
            state,
            version: self.version,
            commitment: self.commitment.clone(),
            seed: self.seed.clone(),
            pre_open_count,
            pre_open_threshold: main.pre_open_threshold,
            pre_open_admitted: main.pre_open_passed,
            open_admitted: main.open_passed,
            open_admitted_rank: main.open_rank,
            open_count: self.open_count(),
            rate_per_s: effective_rate,
            remaining: input.remaining,
            published_at_ms: input.now_ms,
            outstanding: self.outstanding,
            waiting_list_line: (self.waiting_list_line > self.main_line)
                .then(|| self.line(self.waiting_list_line)),
            expired_line: expired.filter(|(m, _)| *m > 0).map(|(m, _)| self.line(m)),
            expired_waiting_list_line: expired.filter(|(m, l)| l > m).map(|(_, l)| self.line(l)),
            estimate: Some(self.estimate(input)),
        };
        let moved = admitted > 0
            || self.main_line != main_from
            || self.waiting_list_line != wl_line_from
            || self.sold_out != was_sold_out;
        let progress = moved.then_some(Progress::Admitted {
            at_ms: input.now_ms,
            main_from,
            main_to: self.main_line,
            waiting_list: admitted_wl,
            waiting_list_line: self.waiting_list_line,
            sold_out: self.sold_out,
        });
        (wm, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn input(now_ms: u64, remaining: u64) -> ControllerInput {
        ControllerInput {
            now_ms,
            state: SaleState::OnSale,
            pre_open_count: 0,
            remaining,
            held: 0,
            sold: 0,
            core_health: 1.0,
            operator_rate_per_s: 10.0,
        }
    }

    fn ticket(i: u64) -> TicketRef {
        TicketRef {
            ticket_id: QueueTicketId::from_random(u128::from(i) + 1),
            phase: QueuePhase::Open,
            rank: Some(format!("{i:024x}")),
        }
    }

    /// A controller with `open` open-phase places, opened (seed revealed).
    fn controller(open: u64, config: ControllerConfig) -> AdmissionController {
        let mut c = AdmissionController::new(
            EventId::parse("e1").unwrap(),
            lottery::commitment(SEED).unwrap(),
            config,
        );
        c.reveal(SEED, &[]).unwrap();
        for i in 0..open {
            let t = ticket(i);
            c.push_open(t.rank.unwrap(), t.ticket_id);
        }
        c
    }

    fn one_ticket_each() -> ControllerConfig {
        ControllerConfig { tickets_per_order_prior: 1.0, ..ControllerConfig::default() }
    }

    #[test]
    fn admits_at_the_operator_rate_scaled_by_health() {
        let mut c = controller(1000, one_ticket_each());
        c.tick(&input(0, 1000));
        let (w, p) = c.tick(&input(1000, 1000));
        assert_eq!(w.open_admitted, 10);
        assert_eq!(w.open_admitted_rank, ticket(9).rank);
        assert!(matches!(p, Some(Progress::Admitted { main_from: 0, main_to: 10, .. })));
        let mut half = input(2000, 1000);
        half.core_health = 0.5;
        let (w, _) = c.tick(&half);
        assert_eq!(w.open_admitted, 15);
        assert_eq!(w.rate_per_s, 5.0);
        assert_eq!(w.outstanding, 15);
        assert!(w.version > 1);
    }

    #[test]
    fn pre_open_fans_go_first_in_lottery_order() {
        let mut c = AdmissionController::new(
            EventId::parse("e1").unwrap(),
            lottery::commitment(SEED).unwrap(),
            one_ticket_each(),
        );
        let ids: Vec<QueueTicketId> = (0..20).map(QueueTicketId::from_random).collect();
        let order = c.reveal(SEED, &ids).unwrap();
        for i in 0..5 {
            let t = ticket(100 + i);
            c.push_open(t.rank.unwrap(), t.ticket_id);
        }
        c.tick(&input(0, 1000));
        let (w, _) = c.tick(&input(1000, 1000));
        assert_eq!((w.pre_open_admitted, w.open_admitted), (10, 0));
        let t = w.pre_open_threshold.unwrap();
        let seed = hex::decode(SEED).unwrap();
        let admitted: Vec<_> = ids
            .iter()
            .filter(|id| {
                lottery::lottery_rank(&lottery::lottery_value(&seed, &w.event_id, id)) <= t
            })
            .cloned()
            .collect();
        assert_eq!(admitted.len(), 10);
        assert!(order[..10].iter().all(|id| admitted.contains(id)));
        let (w, _) = c.tick(&input(2000, 1000));
        assert_eq!((w.pre_open_admitted, w.open_admitted), (20, 0));
        let (w, _) = c.tick(&input(3000, 1000));
        assert_eq!(w.open_admitted, 5);
        // A pre-open ticket is found by its lottery rank.
        let pre = TicketRef { ticket_id: order[3].clone(), phase: QueuePhase::PreOpen, rank: None };
        assert_eq!(c.position_of(&pre), Some(3));
    }

    #[test]
    fn admits_nobody_before_the_sale_opens() {
        let mut c = AdmissionController::new(
            EventId::parse("e1").unwrap(),
            lottery::commitment(SEED).unwrap(),
            ControllerConfig::default(),
        );
        let mut i = input(0, 100);
        i.state = SaleState::Scheduled;
        i.pre_open_count = 50;
        c.tick(&i);
        i.now_ms = 5000;
        let (w, p) = c.tick(&i);
        assert_eq!((w.pre_open_admitted, w.open_admitted, w.pre_open_threshold), (0, 0, None));
        assert_eq!(w.pre_open_count, 50);
        assert_eq!(p, None);
        // Fans waiting for the opening are told the rate they can expect.
        assert_eq!(w.estimate.unwrap().planned_per_s, 10.0);
    }

    #[test]
    fn refuses_a_seed_that_breaks_the_commitment() {
        let mut c = AdmissionController::new(
            EventId::parse("e1").unwrap(),
            lottery::commitment(SEED).unwrap(),
            ControllerConfig::default(),
        );
        assert_eq!(c.reveal(&"22".repeat(32), &[]), Err(RevealError::CommitmentMismatch));
    }

    /// Ticks once a second from `from_s` to `to_s` (inclusive) with `remaining` places.
    fn run(
        c: &mut AdmissionController,
        from_s: u64,
        to_s: u64,
        remaining: u64,
    ) -> AdmissionWatermark {
        let mut last = None;
        for s in from_s..=to_s {
            last = Some(c.tick(&input(s * 1000, remaining)).0);
        }
        last.unwrap()
    }

    #[test]
    fn the_watermark_follows_what_is_really_left() {
        // 3 places, 1 ticket a fan: 3 fans admitted, then the rest is spoken for.
        let mut c = controller(100, one_ticket_each());
        let w = run(&mut c, 0, 2, 3);
        assert_eq!((w.open_admitted, w.outstanding), (3, 3));
        assert_eq!(w.state, SaleState::SoldOut);
        assert_eq!(w.rate_per_s, 0.0);
        // Two fans hold (what is left drops to 1); one admission is still out.
        c.fan_event(&ticket(0), FanEvent::Used { seats: 1 }, 2500);
        c.fan_event(&ticket(1), FanEvent::Used { seats: 1 }, 2500);
        let w = run(&mut c, 3, 4, 1);
        assert_eq!((w.open_admitted, w.outstanding), (3, 1));
        assert_eq!(w.state, SaleState::SoldOut);
        // Seen two fans take two seats each: an admission now stands for two places.
        let mut c = controller(100, one_ticket_each());
        run(&mut c, 0, 1, 10);
        for i in 0..10 {
            c.fan_event(&ticket(i), FanEvent::Used { seats: 2 }, 1500);
        }
        let w = run(&mut c, 2, 3, 10);
        // 10 places left at ~1.8 a fan: 6 more fans.
        assert_eq!(w.outstanding, 6, "{:?}", w.estimate);
    }

    #[test]
    fn admissions_recycle_when_they_expire_fail_or_leave() {
        let config = ControllerConfig {
            admission_ttl_ms: 10_000,
            admission_grace_ms: 2_000,
            ..one_ticket_each()
        };
        let mut c = controller(100, config);
        let w = run(&mut c, 0, 1, 3);
        assert_eq!(w.open_admitted, 3);
        // A hold fails for lack of seats: that place goes to the next fan at once.
        c.fan_event(&ticket(0), FanEvent::GaveBack, 1500);
        let w = run(&mut c, 2, 2, 3);
        assert_eq!((w.open_admitted, w.outstanding), (4, 3));
        // An admitted fan leaves: the next one is admitted.
        c.fan_event(&ticket(1), FanEvent::Left, 2500);
        let w = run(&mut c, 3, 3, 3);
        assert_eq!((w.open_admitted, w.outstanding), (5, 3));
        // A fan who left before their turn is skipped, not admitted.
        c.fan_event(&ticket(6), FanEvent::Left, 3500);
        // Nobody uses theirs: at 1 s + 12 s the first ones expire and the next go in.
        assert!(c.due_expiries(12_000).is_empty());
        let due = c.due_expiries(13_000);
        let positions: Vec<u64> = due.iter().map(|(p, _)| *p).collect();
        // 0 gave back (still usable until it expires), 1 left, 2 is outstanding.
        assert_eq!(positions, vec![0, 2]);
        assert_eq!(due[1].1, ticket(2));
        // The store found 0 used meanwhile: only 2 expires.
        let p = c.expire(&positions, &[0], 13_000);
        assert_eq!(p, Some(Progress::Expired { at_ms: 13_000, positions: vec![2] }));
        let w = run(&mut c, 13, 13, 3);
        assert_eq!((w.open_admitted, w.outstanding), (6, 3), "5 is next");
        // A held place that comes back (released, expired) admits the next fan too; 6 left
        // and is skipped.
        let w = run(&mut c, 14, 14, 4);
        assert_eq!((w.open_admitted, w.outstanding), (8, 4));
        assert!(c.is_outstanding(7) && !c.is_outstanding(6));
    }

    #[test]
    fn sold_out_fans_on_the_waiting_list_get_returns_in_queue_order() {
        let mut c = controller(20, one_ticket_each());
        let w = run(&mut c, 0, 1, 2);
        assert_eq!((w.open_admitted, w.state), (2, SaleState::SoldOut));
        for i in [9, 4, 7] {
            c.fan_event(&ticket(i), FanEvent::WaitingList, 1500);
        }
        c.fan_event(&ticket(0), FanEvent::Used { seats: 1 }, 1500);
        c.fan_event(&ticket(1), FanEvent::GaveBack, 1500);
        // One place comes back: the earliest fan on the list, not the next in line.
        let w = run(&mut c, 2, 2, 1);
        assert_eq!(w.state, SaleState::SoldOut);
        assert_eq!(w.open_admitted, 2, "the main line stays");
        let line = w.waiting_list_line.clone().unwrap();
        assert_eq!(line.open_passed, 5);
        assert!(c.is_outstanding(4));
        assert!(!c.is_outstanding(2));
        // Another place: 7, then 9.
        c.fan_event(&ticket(4), FanEvent::Used { seats: 1 }, 2500);
        let w = run(&mut c, 3, 3, 1);
        assert_eq!(w.waiting_list_line.unwrap().open_passed, 8);
        c.fan_event(&ticket(7), FanEvent::GaveBack, 3500);
        let w = run(&mut c, 4, 4, 1);
        assert_eq!(w.waiting_list_line.clone().unwrap().open_passed, 10);
        assert_eq!(w.state, SaleState::SoldOut);
        // A fan earlier in line who chooses the list now is admitted at once.
        c.fan_event(&ticket(9), FanEvent::GaveBack, 4500);
        c.fan_event(&ticket(3), FanEvent::WaitingList, 4500);
        assert!(c.is_outstanding(3));
        // The list is empty and a place is still there: the line moves in queue order again.
        c.fan_event(&ticket(3), FanEvent::GaveBack, 4600);
        let w = run(&mut c, 5, 5, 1);
        assert_eq!(w.open_admitted, 3);
        assert_eq!(w.state, SaleState::SoldOut, "and that place is spoken for again");
    }

    #[test]
    fn a_successor_replaying_the_log_resumes_where_it_stopped() {
        let config = ControllerConfig {
            admission_ttl_ms: 5_000,
            admission_grace_ms: 0,
            ..one_ticket_each()
        };
        let mut a = controller(30, config.clone());
        type Entry = (Option<(TicketRef, FanEvent, u64)>, Option<Progress>);
        let mut log: Vec<Entry> = Vec::new();
        let fan = |c: &mut AdmissionController, log: &mut Vec<_>, i, e, at| {
            c.fan_event(&ticket(i), e, at);
            log.push((Some((ticket(i), e, at)), None));
        };
        for s in 0..=12u64 {
            let remaining = if s < 6 { 4 } else { 3 };
            if s == 2 {
                fan(&mut a, &mut log, 0, FanEvent::Used { seats: 1 }, 1900);
                fan(&mut a, &mut log, 1, FanEvent::GaveBack, 1900);
                fan(&mut a, &mut log, 8, FanEvent::Left, 1900);
            }
            if s == 4 {
                fan(&mut a, &mut log, 12, FanEvent::WaitingList, 3900);
                fan(&mut a, &mut log, 15, FanEvent::WaitingList, 3900);
            }
            let due: Vec<u64> = a.due_expiries(s * 1000).iter().map(|(p, _)| *p).collect();
            if let Some(p) = a.expire(&due, &[], s * 1000) {
                log.push((None, Some(p)));
            }
            let (_, p) = a.tick(&input(s * 1000, remaining));
            if let Some(p) = p {
                log.push((None, Some(p)));
            }
        }
        let mut b = controller(30, config);
        for (f, p) in &log {
            if let Some((t, e, at)) = f {
                b.fan_event(t, *e, *at);
            }
            if let Some(p) = p {
                b.replay(p);
            }
        }
        assert_eq!(b.main_line, a.main_line);
        assert_eq!(b.waiting_list_line, a.waiting_list_line);
        assert_eq!(b.sold_out, a.sold_out);
        assert_eq!(b.outstanding, a.outstanding);
        let mut ka: Vec<_> = a.admissions.iter().map(|(p, x)| (*p, *x)).collect();
        let mut kb: Vec<_> = b.admissions.iter().map(|(p, x)| (*p, *x)).collect();
        ka.sort_by_key(|(p, _)| *p);
        kb.sort_by_key(|(p, _)| *p);
        assert_eq!(ka, kb);
        b.restore_version(a.version);
        let (wa, _) = a.tick(&input(13_000, 3));
        let (wb, _) = b.tick(&input(13_000, 3));
        assert_eq!(
            (wa.open_admitted, wa.outstanding, wa.state, wa.waiting_list_line),
            (wb.open_admitted, wb.outstanding, wb.state, wb.waiting_list_line)
        );
        assert!(wb.version > wa.version - 1);
    }

    #[test]
    fn measures_the_admission_rate_and_the_expired_line() {
        let config = ControllerConfig {
            admission_ttl_ms: 3_000,
            admission_grace_ms: 0,
            ..one_ticket_each()
        };
        let mut c = controller(1000, config);
        let w = run(&mut c, 0, 10, 1000);
        let e = w.estimate.clone().unwrap();
        assert!((e.admitted_per_s - 10.0).abs() < 1.5, "{e:?}");
        assert!(
            e.admitted_per_s_low <= e.admitted_per_s && e.admitted_per_s <= e.admitted_per_s_high
        );
        // Admitted more than 3 s ago: everyone the line had passed at 7 s.
        assert_eq!(w.expired_line.unwrap().open_passed, 70);
    }
}
