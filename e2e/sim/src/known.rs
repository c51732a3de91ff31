//! Bugs the simulation found in the crates it drives that are not fixed yet.
//!
//! A violation that matches a known issue is reported apart (`Report::known`) and does not
//! fail a run unless the scenario is strict, so that the fixed seeds keep guarding
//! everything else. Each issue has a regression test pinned to a seed that shows it
//! (`tests/it/main.rs`); when the bug is fixed that test fails, and the entry here goes.

use crate::world::Violation;

/// A bug the simulation found, recognised by the invariant it breaks and a telltale in the
/// violation's detail.
#[derive(Debug, Clone, Copy)]
pub struct KnownIssue {
    pub name: &'static str,
    pub invariant: &'static str,
    pub telltale: &'static str,
}

/// Every known issue.
pub const KNOWN_ISSUES: &[KnownIssue] = &[
    // FIXME(orders/saga.rs, capture_step + void_step): a capture whose answer was lost
    // (a replayed 500, a timeout) is retried under a new key after the payment was in fact
    // captured; the provider answers WrongState, which capture_step takes as "can no longer
    // be captured" and returns the seats. void_step then gets WrongState from the cancel and,
    // if the follow-up retrieve fails, marks the order Failed without refunding: the fan is
    // charged, the seats are resold, nothing gives the money back.
    KnownIssue {
        name: "charged for a failed order after a lost capture answer",
        invariant: "no charge without a completed order",
        telltale: "capture_wrong_state",
    },
    KnownIssue {
        name: "charged for a failed order after a lost capture answer",
        invariant: "a refunded or failed order keeps no money",
        telltale: "capture_wrong_state",
    },
    // FIXME(orders/saga.rs, authorization_truth): when an authorization's answer was lost and
    // the provider shows the payment as requires_action (3-D Secure), the truth is "unknown"
    // forever: the order stays PaymentPending and the reconciler drives it every pass.
    KnownIssue {
        name: "an authorization needing 3-D Secure whose answer was lost never settles",
        invariant: "every order settles",
        telltale: "requires_action via pm_card_authenticationRequired",
    },
    // FIXME(orders/saga.rs, authorization_truth / AUTHORIZE_GRACE_MS): an authorization the
    // provider has no record of 30 s (wall clock) after the order was created is taken as
    // never made and the order fails; a request still on its way (slow provider, or the wall
    // clock jumped) then lands, and nothing ever voids it: the amount stays held on the card.
    KnownIssue {
        name: "a late authorization after the grace period is left open",
        invariant: "no authorization is left open",
        telltale: "payment_not_created",
    },
    // FIXME(orders/checkin.rs, checkin): after a commit_unknown_result the retry takes any
    // check-in at the same gate for its own earlier write (it compares only the gate name).
    // Two scanners at one gate scanning the same ticket at once (a copied QR code) are then
    // both told "admitted" when one of them had its commit dropped.
    KnownIssue {
        name: "two scans at one gate both admit a ticket after an unknown commit",
        invariant: "a ticket is checked in at most once",
        telltale: "at one gate, all answered with one stored check-in",
    },
    // FIXME(inventory/sale.rs, unfreeze_trx): when a payment fails after the hold's payment
    // window ran out and one of its seats went to someone else, the hold is ended (Expired)
    // and its other seats freed without a HoldReleased event in the outbox: other regions'
    // projections and notifications never learn that the hold ended.
    KnownIssue {
        name: "a hold ended by a late payment failure is never published",
        invariant: "every hold change is published exactly once",
        telltale: "is Expired and published HoldEvents { held: 1, released: 0, sold: 0, returned: 0 }",
    },
    // FIXME(inventory/events.rs, create_event): the transaction that writes the event record
    // ignores MaybeCommitted; after a commit_unknown_result that did commit, the retry finds
    // the event and answers EventExists to the operator who just created it.
    KnownIssue {
        name: "create_event answers EventExists after its own unknown commit",
        invariant: "acknowledged outcomes are true",
        telltale: "create_event answered EventExists",
    },
];

/// The known issue a violation is an instance of, if any.
pub fn known_issue(v: &Violation) -> Option<&'static KnownIssue> {
    KNOWN_ISSUES.iter().find(|k| k.invariant == v.invariant && v.detail.contains(k.telltale))
}
