//! Leases in the shared store: at most one holder at a time for a piece of background work
//! that must have a single driver across regions (the admission controller). A holder that
//! dies stops renewing and another process takes over once the lease lapses.

use tessera_fdb_schema::values::{self, LeaseRecord};
use tessera_store::{Store, Transaction, TrxError, run};

/// Takes or renews the lease at `key` for `holder` until `now_ms + ttl_ms`. Returns whether
/// `holder` holds it now.
pub async fn acquire<S: Store>(
    store: &S,
    key: &[u8],
    holder: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> anyhow::Result<bool> {
    let held = run(store, |trx, _| async move {
        let current = match trx.get(key, false).await? {
            Some(b) => values::decode::<LeaseRecord>(&b).ok(),
            None => None,
        };
        let free = match &current {
            None => true,
            Some(l) => l.holder == holder || l.expires_at_ms <= now_ms,
        };
        if !free {
            return Ok(false);
        }
        let rec = LeaseRecord { v: 1, holder: holder.to_owned(), expires_at_ms: now_ms + ttl_ms };
        trx.set(key, &values::encode(&rec));
        Ok::<_, TrxError<std::convert::Infallible>>(true)
    })
    .await
    .map_err(|e| anyhow::anyhow!("lease transaction failed: {e:?}"))?;
    Ok(held)
}

/// Gives the lease up (on shutdown), if `holder` has it.
pub async fn release<S: Store>(store: &S, key: &[u8], holder: &str) -> anyhow::Result<()> {
    run(store, |trx, _| async move {
        if let Some(b) = trx.get(key, false).await?
            && values::decode::<LeaseRecord>(&b).is_ok_and(|l| l.holder == holder)
        {
            trx.clear(key);
        }
        Ok::<_, TrxError<std::convert::Infallible>>(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("lease transaction failed: {e:?}"))?;
    Ok(())
}
