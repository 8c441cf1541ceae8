//! Admission in SQLite: one transaction records the event (or finds it and
//! takes its lease), counts it, applies its directory change and state
//! records, and logs every planned delivery.

use std::time::Duration;

use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, admission, events, now, parse_ts};
use crate::event::Event;
use crate::route::DigestKey;
use crate::store::{Admission, OutboxItem, Planner, StoreError, StoredDelivery};

pub async fn admit(
    store: &SqliteStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
    sent: &[super::journal::Line],
) -> Result<Admission, StoreError> {
    let id = event.id.as_str();
    let now = now();
    let until = store.lease_until();
    let mut tx = store.group.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO events (event_id, event_type, received_at, owner, lease_until) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(id)
    .bind(event.event_type.as_str())
    .bind(&now)
    .bind(&store.owner)
    .bind(&until)
    .execute(tx.conn())
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        super::mark_lines_sent(tx.conn(), sent).await?;
        let row = sqlx::query("SELECT completed_at, owner, lease_until FROM events WHERE event_id = ?")
            .bind(id)
            .fetch_one(tx.conn())
            .await?;
        let completed: Option<String> = row.try_get("completed_at")?;
        let owner: Option<String> = row.try_get("owner")?;
        let lease: Option<String> = row.try_get("lease_until")?;
        if completed.is_some() {
            tx.commit().await?;
            return Ok(Admission::Done);
        }
        if let (Some(owner), Some(lease)) = (owner, lease.as_deref().and_then(parse_ts))
            && owner != store.owner
            && lease > chrono::Utc::now()
        {
            tx.commit().await?;
            let retry_in = (lease - chrono::Utc::now()).to_std().unwrap_or_default();
            return Ok(Admission::Busy {
                retry_in: retry_in.max(Duration::from_millis(50)),
            });
        }
        sqlx::query("UPDATE events SET owner = ?, lease_until = ? WHERE event_id = ?")
            .bind(&store.owner)
            .bind(&until)
            .bind(id)
            .execute(tx.conn())
            .await?;
        let items = claim_pending(tx.conn(), store, id).await?;
        tx.commit().await?;
        return Ok(Admission::Pending { fresh: false, items });
    }
    let positions = admission::count(tx.conn(), counters).await?;
    let plan = plan(&positions);
    admission::apply_directory(tx.conn(), event).await?;
    admission::apply_records(tx.conn(), event, &plan.records).await?;
    if store.archive {
        events::archive(tx.conn(), event, chrono::Utc::now()).await?;
    }
    admission::log_deliveries(tx.conn(), event, &plan.deliveries, chrono::Utc::now()).await?;
    let items = claim_pending(tx.conn(), store, id).await?;
    tx.commit().await?;
    if crate::store::record::directory_key(event).is_some() {
        store.directory_written();
    }
    Ok(Admission::Pending { fresh: true, items })
}

/// Claims the event's pending deliveries (all but those another worker's live claim holds), in log order.
async fn claim_pending(
    conn: &mut SqliteConnection,
    store: &SqliteStore,
    event_id: &str,
) -> Result<Vec<OutboxItem>, StoreError> {
    let rows = sqlx::query(
        "UPDATE notification_log SET owner = ?, claim_until = ?
         WHERE event_id = ? AND status = 'pending' AND (owner IS NULL OR owner = ? OR claim_until < ?)
         RETURNING id, delivery",
    )
    .bind(&store.owner)
    .bind(store.lease_until())
    .bind(event_id)
    .bind(&store.owner)
    .bind(now())
    .fetch_all(conn)
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
