//! Admission in PostgreSQL: one transaction records the event (or locks its
//! row and takes its lease), counts it, applies its directory change (last
//! writer wins by event time) and state records, and logs every planned delivery.

use std::time::Duration;

use sqlx::{Postgres, Row, Transaction};

use super::{PgStore, admission};
use crate::event::Event;
use crate::route::DigestKey;
use crate::store::{Admission, OutboxItem, Planner, StoreError, StoredDelivery};

pub async fn admit(
    store: &PgStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
) -> Result<Admission, StoreError> {
    let id = event.id.as_str();
    let mut tx = store.pool.begin().await?;
    // A concurrent insert of the same id waits for the first transaction and
    // then does nothing: exactly one worker records the event.
    let inserted = sqlx::query(
        "INSERT INTO events (event_id, event_type, received_at, owner, lease_until)
         VALUES ($1, $2, now(), $3, now() + make_interval(secs => $4))
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(id)
    .bind(event.event_type.as_str())
    .bind(&store.owner)
    .bind(store.lease_secs)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return resume(store, tx, id).await;
    }
    let positions = admission::count(&mut tx, counters).await?;
    let plan = plan(&positions);
    admission::apply_directory(&mut tx, event).await?;
    admission::apply_records(&mut tx, event, &plan.records).await?;
    if store.archive {
        admission::archive(&mut tx, event, chrono::Utc::now()).await?;
    }
    admission::log_deliveries(&mut tx, event, &plan.deliveries, chrono::Utc::now()).await?;
    let items = claim_pending(&mut tx, store, id).await?;
    tx.commit().await?;
    Ok(Admission::Pending { fresh: true, items })
}

/// The event was recorded before: done, someone else's, or ours to finish.
async fn resume(store: &PgStore, mut tx: Transaction<'_, Postgres>, id: &str) -> Result<Admission, StoreError> {
    let row = sqlx::query(
        "SELECT completed_at IS NOT NULL AS done, owner,
                EXTRACT(EPOCH FROM (lease_until - now()))::float8 AS lease_left
         FROM events WHERE event_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let done: bool = row.try_get("done")?;
    let owner: Option<String> = row.try_get("owner")?;
    let left: Option<f64> = row.try_get("lease_left")?;
    if done {
        tx.commit().await?;
        return Ok(Admission::Done);
    }
    if let (Some(owner), Some(left)) = (owner, left)
        && owner != store.owner
        && left > 0.0
    {
        tx.commit().await?;
        let retry_in = Duration::try_from_secs_f64(left).unwrap_or_default();
        return Ok(Admission::Busy {
            retry_in: retry_in.max(Duration::from_millis(50)),
        });
    }
    sqlx::query("UPDATE events SET owner = $1, lease_until = now() + make_interval(secs => $2) WHERE event_id = $3")
        .bind(&store.owner)
        .bind(store.lease_secs)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let items = claim_pending(&mut tx, store, id).await?;
    tx.commit().await?;
    Ok(Admission::Pending { fresh: false, items })
}

/// Claims the event's pending deliveries (all but those another worker's live claim holds), in log order.
async fn claim_pending(
    tx: &mut Transaction<'_, Postgres>,
    store: &PgStore,
    event_id: &str,
) -> Result<Vec<OutboxItem>, StoreError> {
    let rows = sqlx::query(
        "UPDATE notification_log SET owner = $2, claim_until = now() + make_interval(secs => $3)
         WHERE event_id = $1 AND status = 'pending' AND (owner IS NULL OR owner = $2 OR claim_until < now())
         RETURNING id, delivery",
    )
    .bind(event_id)
    .bind(&store.owner)
    .bind(store.lease_secs)
    .fetch_all(&mut **tx)
    .await?;
    let mut items = rows
        .into_iter()
        .map(|row| {
            let raw: String = row.try_get("delivery")?;
            Ok(OutboxItem {
                log_id: row.try_get("id")?,
                delivery: StoredDelivery::parse(&raw)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    items.sort_by_key(|item| item.log_id);
    Ok(items)
}
