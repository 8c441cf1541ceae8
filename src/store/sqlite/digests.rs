//! Digests and the notification log in SQLite. The single writer connection
//! makes each claim a serialised transaction: two flushes never claim the
//! same held item, and a lease lets a later flush take over a dead one.

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::{parse_ts, ts};
use crate::decode::decode_structured;
use crate::event::PartnerId;
use crate::route::DigestKey;
use crate::store::{DigestClaim, HeldGroup, HeldItem, LogEntry, LogStatus, StoreError, StoredDelivery};

pub async fn groups(pool: &SqlitePool) -> Result<Vec<HeldGroup>, StoreError> {
    let rows = sqlx::query(
        "SELECT counter, partner, day, recipient, MIN(created_at) AS oldest, COUNT(*) AS items
         FROM held WHERE digested_at IS NULL
         GROUP BY counter, partner, day, recipient ORDER BY oldest",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let day: String = row.try_get("day")?;
            let oldest: String = row.try_get("oldest")?;
            let items: i64 = row.try_get("items")?;
            Ok(HeldGroup {
                key: DigestKey {
                    counter: row.try_get("counter")?,
                    partner: PartnerId::new(row.try_get::<String, _>("partner")?),
                    day: NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                        .map_err(|e| StoreError(format!("held day `{day}`: {e}")))?,
                },
                recipient: row.try_get("recipient")?,
                oldest: parse_ts(&oldest).unwrap_or_else(Utc::now),
                items: u32::try_from(items).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// The id of a digest: the group and exactly the items it lists.
fn digest_id(group: &HeldGroup, held_ids: &[i64]) -> String {
    let mut h = Sha256::new();
    for part in [
        &group.key.counter,
        group.key.partner.as_str(),
        &group.key.day.to_string(),
        &group.recipient,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for id in held_ids {
        h.update(id.to_le_bytes());
    }
    let hex: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("dg-{hex}")
}

pub async fn claim(
    pool: &SqlitePool,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<DigestClaim>, StoreError> {
    let key = &group.key;
    let day = key.day.to_string();
    let mut tx = pool.begin().await?;
    let open = sqlx::query(
        "SELECT id, claimed_by, lease_until, attempts FROM digests
         WHERE counter = ? AND partner = ? AND day = ? AND recipient = ? AND status = 'claimed'",
    )
    .bind(&key.counter)
    .bind(key.partner.as_str())
    .bind(&day)
    .bind(&group.recipient)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, attempt) = match open {
        Some(row) => {
            let id: String = row.try_get("id")?;
            let holder: String = row.try_get("claimed_by")?;
            let leased: String = row.try_get("lease_until")?;
            let attempts: i64 = row.try_get("attempts")?;
            if holder != worker && parse_ts(&leased).is_some_and(|t| t > now) {
                tx.commit().await?;
                return Ok(None);
            }
            sqlx::query("UPDATE digests SET claimed_by = ?, lease_until = ?, attempts = attempts + 1 WHERE id = ?")
                .bind(worker)
                .bind(ts(lease_until))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            (id, u32::try_from(attempts + 1).unwrap_or(u32::MAX))
        }
        None => {
            let held: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM held WHERE counter = ? AND partner = ? AND day = ? AND recipient = ?
                   AND digest_id IS NULL AND digested_at IS NULL ORDER BY id",
            )
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(&day)
            .bind(&group.recipient)
            .fetch_all(&mut *tx)
            .await?;
            if held.is_empty() {
                tx.commit().await?;
                return Ok(None);
            }
            let id = digest_id(group, &held);
            sqlx::query(
                "INSERT INTO digests (id, counter, partner, day, recipient, status, claimed_by, lease_until, items, created_at)
                 VALUES (?, ?, ?, ?, ?, 'claimed', ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(&day)
            .bind(&group.recipient)
            .bind(worker)
            .bind(ts(lease_until))
            .bind(i64::try_from(held.len()).unwrap_or(i64::MAX))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            for held_id in &held {
                sqlx::query("UPDATE held SET digest_id = ? WHERE id = ?")
                    .bind(&id)
                    .bind(held_id)
                    .execute(&mut *tx)
                    .await?;
            }
            (id, 1)
        }
    };
    let rows = sqlx::query(
        "SELECT held.log_id, held.event_json, notification_log.delivery FROM held
         JOIN notification_log ON notification_log.id = held.log_id
         WHERE held.digest_id = ? ORDER BY held.id",
    )
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items = rows.iter().map(held_item).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(DigestClaim {
        id,
        key: key.clone(),
        recipient: group.recipient.clone(),
        items,
        attempt,
    }))
}

fn held_item(row: &SqliteRow) -> Result<HeldItem, StoreError> {
    let event_json: String = row.try_get("event_json")?;
    let delivery: String = row.try_get("delivery")?;
    let stored: StoredDelivery =
        serde_json::from_str(&delivery).map_err(|e| StoreError(format!("a held delivery is unreadable: {e}")))?;
    Ok(HeldItem {
        log_id: row.try_get("log_id")?,
        event: decode_structured(event_json.as_bytes()).map_err(|e| StoreError(format!("a held event: {e}")))?,
        delivery: stored.into(),
    })
}

pub async fn sent(pool: &SqlitePool, digest_id: &str, message_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = ts(now);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE digests SET status = 'sent', message_id = ?, sent_at = ? WHERE id = ? AND status = 'claimed'")
        .bind(message_id)
        .bind(&now)
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE notification_log SET status = 'digested', digest_id = ?, message_id = ?, error = NULL, updated_at = ?
         WHERE id IN (SELECT log_id FROM held WHERE digest_id = ?)",
    )
    .bind(digest_id)
    .bind(message_id)
    .bind(&now)
    .bind(digest_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE held SET digested_at = ? WHERE digest_id = ?")
        .bind(&now)
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

macro_rules! log_columns {
    () => {
        "event_id, event_type, notification, channel, recipient, status, rules, message_id, digest_id, error, \
         attempts, created_at, updated_at"
    };
}

pub async fn log_for_event(pool: &SqlitePool, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE event_id = ? ORDER BY id"
    ))
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

pub async fn log_for_recipient(pool: &SqlitePool, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE recipient = ? ORDER BY created_at DESC, id DESC LIMIT ?"
    ))
    .bind(email.to_ascii_lowercase())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

fn log_entry(row: &SqliteRow) -> Result<LogEntry, StoreError> {
    let status: String = row.try_get("status")?;
    let rules: String = row.try_get("rules")?;
    let attempts: i64 = row.try_get("attempts")?;
    let created: String = row.try_get("created_at")?;
    let updated: String = row.try_get("updated_at")?;
    Ok(LogEntry {
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        notification: row.try_get("notification")?,
        channel: row.try_get("channel")?,
        recipient: row.try_get("recipient")?,
        status: LogStatus::parse(&status).ok_or_else(|| StoreError(format!("unknown log status `{status}`")))?,
        rules: serde_json::from_str(&rules).unwrap_or_default(),
        message_id: row.try_get("message_id")?,
        digest_id: row.try_get("digest_id")?,
        error: row.try_get("error")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: parse_ts(&created).unwrap_or_default(),
        updated_at: parse_ts(&updated).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::cli::{read_directory, read_event};
    use crate::route::{DigestKey, MemoryState, RuleSet, route};
    use crate::store::{Admission, LogStatus, Store};
    use chrono::{Duration, Utc};
    use std::path::Path;

    /// A store holding the emails of leads 11..=`leads` for Fabrikam's three recipients.
    async fn store_with_held(leads: u32) -> (tempfile::TempDir, SqliteStore) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = RuleSet::load_dir(&root.join("rules")).unwrap();
        let dir = read_directory(&root.join("rules/tests/directory.jsonl")).unwrap();
        let lead = read_event(&root.join("rules/tests/events/lead.created.contact_me.json")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}/s.db", tmp.path().display()))
            .await
            .unwrap();
        for n in 1..=leads {
            let mut event = lead.clone();
            event.id = crate::event::EventId::new(format!("lead-{n}"));
            let counters = route(&event, &rules, &dir, &MemoryState::new()).counters;
            let planner = |positions: &[(DigestKey, u32)]| {
                let mut state = MemoryState::new();
                for (k, p) in positions {
                    state.set_count(k.clone(), *p);
                }
                route(&event, &rules, &dir, &state)
            };
            assert!(matches!(
                store.admit(&event, &counters, &planner).await.unwrap(),
                Admission::Pending { .. }
            ));
        }
        (tmp, store)
    }

    #[tokio::test]
    async fn a_claim_is_exclusive_until_its_lease_ends_and_then_the_same_digest() {
        let (_tmp, store) = store_with_held(14).await;
        let groups = store.held_groups().await.unwrap();
        assert_eq!(groups.len(), 3, "one group per recipient");
        assert!(groups.iter().all(|g| g.items == 4), "leads 11 to 14");
        let g = &groups[0];
        let now = Utc::now();
        let a = store
            .claim_digest(g, "a", now, now + Duration::seconds(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.items.len(), 4);
        assert_eq!(a.attempt, 1);
        assert!(
            store
                .claim_digest(g, "b", now, now + Duration::seconds(30))
                .await
                .unwrap()
                .is_none(),
            "leased to a"
        );
        // a dies; after its lease, b takes over the same digest with the same items.
        let later = now + Duration::seconds(31);
        let b = store
            .claim_digest(g, "b", later, later + Duration::seconds(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.id, a.id);
        assert_eq!(b.attempt, 2);
        let ids = |c: &crate::store::DigestClaim| c.items.iter().map(|i| i.log_id).collect::<Vec<_>>();
        assert_eq!(ids(&b), ids(&a));
        store.digest_sent(&b.id, "<m@x>", later).await.unwrap();
        // Sent: nothing more to claim for that recipient, and the log says where each lead went.
        assert!(
            store
                .claim_digest(g, "c", later, later + Duration::seconds(30))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.held_groups().await.unwrap().len(), 2);
        let log = store.log_for_recipient(&g.recipient, 100).await.unwrap();
        let digested: Vec<_> = log.iter().filter(|r| r.status == LogStatus::Digested).collect();
        assert_eq!(digested.len(), 4);
        assert!(digested.iter().all(|r| r.digest_id.as_deref() == Some(a.id.as_str())));
        assert_eq!(log.iter().filter(|r| r.status == LogStatus::Held).count(), 0);
    }

    #[tokio::test]
    async fn leads_held_after_a_claim_wait_for_the_next_digest() {
        let (_tmp, store) = store_with_held(12).await;
        let g = store.held_groups().await.unwrap().remove(0);
        let now = Utc::now();
        let first = store
            .claim_digest(&g, "a", now, now + Duration::seconds(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.items.len(), 2);
        store.digest_sent(&first.id, "<1@x>", now).await.unwrap();
        assert!(
            store
                .held_groups()
                .await
                .unwrap()
                .iter()
                .all(|h| h.recipient != g.recipient)
        );
    }
}
