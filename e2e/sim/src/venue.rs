//! The event every workload sells: a seat map generated from the seed.

use tessera_api::inventory::{CreateEvent, GaPoolSpec, RowSpec, SectionSpec, Tier};
use tessera_api::{EventId, PoolId, SeatId, SectionId};

use crate::util::Dice;

/// General-admission capacities the simulation uses. Each splits into 1, 2, 3, 4, 6 or 12
/// shards (32 places per shard): all divide [`GA_SHARD_PERIOD`], which the simulation
/// relies on to make the inventory's process-wide shard rotation deterministic.
const GA_CAPACITIES: [u32; 6] = [40, 70, 100, 130, 200, 390];
pub(crate) const GA_SHARD_PERIOD: u64 = 12;

/// A reserved-seating section of the venue.
#[derive(Debug, Clone)]
pub struct VenueSection {
    pub section_id: SectionId,
    pub tier: String,
    /// Row labels and their seat counts.
    pub rows: Vec<(String, u16)>,
}

/// The event of a scenario.
#[derive(Debug, Clone)]
pub struct Venue {
    pub event_id: EventId,
    pub sections: Vec<VenueSection>,
    pub pools: Vec<(PoolId, u32)>,
    pub tiers: Vec<Tier>,
    pub max_tickets_per_customer: u32,
    pub hold_ttl_s: u32,
}

impl Venue {
    pub(crate) fn generate(seed: u64) -> Venue {
        let mut d = Dice::new(seed, "venue");
        let tiers = vec![
            Tier {
                tier_id: "P1".into(),
                name: "Premium".into(),
                price_minor: d.range(90, 150) * 100,
            },
            Tier {
                tier_id: "P2".into(),
                name: "Standard".into(),
                price_minor: d.range(40, 80) * 100,
            },
            Tier { tier_id: "GA".into(), name: "Floor".into(), price_minor: d.range(30, 60) * 100 },
        ];
        let mut sections = Vec::new();
        for (i, name) in ["A", "B", "C"].iter().enumerate().take(d.range(2, 3) as usize) {
            let rows =
                (1..=d.range(2, 5)).map(|r| (r.to_string(), d.range(6, 14) as u16)).collect();
            sections.push(VenueSection {
                section_id: SectionId::parse(name).expect("a valid section id"),
                tier: if i == 0 { "P1".into() } else { "P2".into() },
                rows,
            });
        }
        let mut pools = Vec::new();
        for name in ["FLOOR", "PIT"].iter().take(d.range(1, 2) as usize) {
            pools.push((PoolId::parse(name).expect("a valid pool id"), *d.pick(&GA_CAPACITIES)));
        }
        Venue {
            event_id: EventId::parse(&format!("sim-{seed:x}")).expect("a valid event id"),
            sections,
            pools,
            tiers,
            max_tickets_per_customer: d.range(4, 8) as u32,
            hold_ttl_s: d.range(30, 150) as u32,
        }
    }

    /// The request that creates the event.
    pub fn create_event(&self) -> CreateEvent {
        CreateEvent {
            event_id: self.event_id.clone(),
            name: "Simulated Night".into(),
            venue: "Simulated Arena".into(),
            starts_at: "2030-06-01T20:00:00Z".into(),
            on_sale_at: None,
            currency: "EUR".into(),
            max_tickets_per_customer: self.max_tickets_per_customer,
            hold_ttl_s: self.hold_ttl_s,
            tiers: self.tiers.clone(),
            sections: self
                .sections
                .iter()
                .map(|s| SectionSpec {
                    section_id: s.section_id.clone(),
                    name: format!("Block {}", s.section_id),
                    tier: s.tier.clone(),
                    rows: s
                        .rows
                        .iter()
                        .map(|(row, seats)| RowSpec {
                            row: row.clone(),
                            seats: *seats,
                            accessible: if row == "1" { vec![1, 2] } else { vec![] },
                        })
                        .collect(),
                    row_count: None,
                    seats_per_row: None,
                })
                .collect(),
            ga_pools: self
                .pools
                .iter()
                .map(|(p, c)| GaPoolSpec {
                    pool_id: p.clone(),
                    name: p.to_string(),
                    tier: "GA".into(),
                    capacity: *c,
                })
                .collect(),
            open_now: true,
        }
    }

    /// Every seat of a section.
    pub fn seats_of(&self, section: &VenueSection) -> Vec<SeatId> {
        let mut out = Vec::new();
        for (row, n) in &section.rows {
            for i in 1..=*n {
                if let Ok(s) = SeatId::new(section.section_id.clone(), row, i) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The seats everyone wants: the front row of the first section.
    pub fn hot_seats(&self) -> Vec<SeatId> {
        let s = &self.sections[0];
        let (row, n) = &s.rows[0];
        (1..=*n).filter_map(|i| SeatId::new(s.section_id.clone(), row, i).ok()).collect()
    }

    pub fn price_of_tier(&self, tier: &str) -> u64 {
        self.tiers.iter().find(|t| t.tier_id == tier).map_or(0, |t| t.price_minor)
    }
}
