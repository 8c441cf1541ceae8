//! The embedded store: SQLite in WAL mode through sqlx. One writer connection
//! (SQLite allows one writer at a time; queueing in the pool beats
//! `SQLITE_BUSY`), a few readers for the HTTP API, migrations at open.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};

mod digests;
mod entries;

use super::{
    ActionCenterEntry, Admission, DigestClaim, HeldGroup, LogEntry, OutboxItem, Planner, Store, StoreError,
    StoredDelivery,
};
use crate::decode::decode_structured;
use crate::directory::Directory;
use crate::event::{Event, EventData};
use crate::route::{Decision, DigestKey, MemoryState};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn now() -> String {
    ts(Utc::now())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw).ok().map(|t| t.with_timezone(&Utc))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `sqlite://PATH` and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .unwrap_or_default();
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StoreError(format!("creating {}: {e}", parent.display())))?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives a power cut, which is what acking relies on.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }
}

/// The directory key an event replaces, and whether it removes it.
fn directory_key(event: &Event) -> Option<(String, bool)> {
    Some(match &event.data {
        EventData::PartnerUpserted(p) => (format!("partner:{}", p.partner_id), false),
        EventData::UserUpserted(u) => (format!("user:{}:{}", u.partner_id, u.user.user_id), false),
        EventData::UserRemoved(u) => (format!("user:{}:{}", u.partner_id, u.user_id), true),
        EventData::ProfileContactSet(c) => (format!("contact:{}:{}", c.partner_id, c.location_id), false),
        _ => return None,
    })
}

/// The event as a structured CloudEvent, to replay into the directory at start.
fn cloudevent_json(event: &Event) -> String {
    json!({
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.event_type,
        "time": event.time,
        "subject": event.subject,
        "data": event.data,
    })
    .to_string()
}

async fn pending_items(tx: &mut Transaction<'_, Sqlite>, event_id: &str) -> Result<Vec<OutboxItem>, StoreError> {
    let rows =
        sqlx::query("SELECT id, delivery FROM notification_log WHERE event_id = ? AND status = 'pending' ORDER BY id")
            .bind(event_id)
            .fetch_all(&mut **tx)
            .await?;
    rows.into_iter()
        .map(|row| {
            let raw: String = row.try_get("delivery")?;
            let stored: StoredDelivery =
                serde_json::from_str(&raw).map_err(|e| StoreError(format!("a stored delivery is unreadable: {e}")))?;
            Ok(OutboxItem {
                log_id: row.try_get("id")?,
                delivery: stored.into(),
            })
        })
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn load_directory(&self) -> Result<Directory, StoreError> {
        let rows = sqlx::query("SELECT event_json FROM directory ORDER BY seq")
            .fetch_all(&self.reader)
            .await?;
        let mut dir = Directory::new();
        for row in rows {
            let raw: String = row.try_get("event_json")?;
            let event = decode_structured(raw.as_bytes()).map_err(|e| StoreError(format!("stored directory: {e}")))?;
            dir.apply(&event);
        }
        Ok(dir)
    }

    async fn state_for(&self, event: &Event) -> Result<MemoryState, StoreError> {
        let mut state = MemoryState::new();
        let Some(referral) = event.referral() else {
            return Ok(state);
        };
        let rows = sqlx::query("SELECT receiver, status FROM referral_states WHERE referral = ?")
            .bind(referral.id.as_str())
            .fetch_all(&self.writer)
            .await?;
        for row in rows {
            let receiver: String = row.try_get("receiver")?;
            let status: String = row.try_get("status")?;
            if receiver.is_empty() {
                state.set_referral_status(referral.id.as_str(), &status);
            } else {
                state.set_receiver_status(referral.id.as_str(), &receiver, &status);
            }
        }
        Ok(state)
    }

    async fn admit(&self, event: &Event, counters: &[DigestKey], plan: Planner<'_>) -> Result<Admission, StoreError> {
        let id = event.id.as_str();
        let mut tx = self.writer.begin().await?;
        let seen: Option<Option<String>> = sqlx::query_scalar("SELECT completed_at FROM events WHERE event_id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        match seen {
            Some(Some(_)) => {
                tx.commit().await?;
                return Ok(Admission::Done);
            }
            Some(None) => {
                let items = pending_items(&mut tx, id).await?;
                tx.commit().await?;
                return Ok(Admission::Pending { fresh: false, items });
            }
            None => {}
        }
        let now = now();
        sqlx::query("INSERT INTO events (event_id, event_type, received_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(event.event_type.as_str())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        let mut positions = Vec::with_capacity(counters.len());
        for key in counters {
            let count: i64 = sqlx::query_scalar(
                "INSERT INTO digest_counters (counter, partner, day, count) VALUES (?, ?, ?, 1)
                 ON CONFLICT (counter, partner, day) DO UPDATE SET count = count + 1 RETURNING count",
            )
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(key.day.to_string())
            .fetch_one(&mut *tx)
            .await?;
            positions.push((key.clone(), u32::try_from(count).unwrap_or(u32::MAX)));
        }
        let plan = plan(&positions);
        if let Some((key, removed)) = directory_key(event) {
            if removed {
                sqlx::query("DELETE FROM directory WHERE key = ?")
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO directory (key, seq, event_json)
                     VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM directory), ?)
                     ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, event_json = excluded.event_json",
                )
                .bind(&key)
                .bind(cloudevent_json(event))
                .execute(&mut *tx)
                .await?;
            }
        }
        for change in &plan.records {
            sqlx::query(
                "INSERT INTO referral_states (referral, receiver, status, rule, event_id, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (referral, receiver) DO UPDATE SET status = excluded.status, rule = excluded.rule,
                   event_id = excluded.event_id, updated_at = excluded.updated_at",
            )
            .bind(&change.referral)
            .bind(change.receiver.as_deref().unwrap_or(""))
            .bind(&change.status)
            .bind(&change.rule)
            .bind(id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        for delivery in &plan.deliveries {
            let status = match delivery.decision {
                Decision::Send => "pending",
                Decision::Hold => "held",
                Decision::Suppress => "suppressed",
            };
            let stored = serde_json::to_string(&StoredDelivery::from(delivery))
                .map_err(|e| StoreError(format!("serialising a delivery: {e}")))?;
            let log_id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO notification_log
                   (event_id, event_type, notification, channel, recipient, status, rules, delivery, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (event_id, notification, channel, recipient) DO NOTHING RETURNING id",
            )
            .bind(id)
            .bind(event.event_type.as_str())
            .bind(&delivery.notification)
            .bind(delivery.channel.to_string())
            .bind(delivery.recipient.email.key())
            .bind(status)
            .bind(serde_json::to_string(&delivery.rules).unwrap_or_default())
            .bind(stored)
            .bind(&now)
            .bind(&now)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Some(log_id), Some(key)) = (log_id, delivery.digest.as_ref())
                && delivery.decision == Decision::Hold
            {
                sqlx::query(
                    "INSERT INTO held (log_id, counter, partner, day, recipient, created_at, event_json)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(log_id)
                .bind(&key.counter)
                .bind(key.partner.as_str())
                .bind(key.day.to_string())
                .bind(delivery.recipient.email.key())
                .bind(&now)
                .bind(cloudevent_json(event))
                .execute(&mut *tx)
                .await?;
            }
        }
        let items = pending_items(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Admission::Pending { fresh: true, items })
    }

    async fn mark_sent(&self, log_id: i64, message_id: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_log SET status = 'sent', message_id = ?, error = NULL, attempts = attempts + 1,
               updated_at = ? WHERE id = ?",
        )
        .bind(message_id)
        .bind(now())
        .bind(log_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn mark_failed(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_log SET status = 'failed', error = ?, attempts = attempts + 1, updated_at = ?
             WHERE id = ?",
        )
        .bind(error)
        .bind(now())
        .bind(log_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn note_attempt(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE notification_log SET error = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?")
            .bind(error)
            .bind(now())
            .bind(log_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn complete(&self, event_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE events SET completed_at = ? WHERE event_id = ?")
            .bind(now())
            .bind(event_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn put_entry(&self, e: &ActionCenterEntry) -> Result<(), StoreError> {
        entries::put(&self.writer, e).await
    }

    async fn entries(&self, user: &str, unread_only: bool, limit: u32) -> Result<Vec<ActionCenterEntry>, StoreError> {
        entries::list(&self.reader, user, unread_only, limit).await
    }

    async fn unread_count(&self, user: &str) -> Result<u64, StoreError> {
        entries::unread(&self.reader, user).await
    }

    async fn mark_read(&self, user: &str, id: Option<&str>) -> Result<u64, StoreError> {
        entries::mark_read(&self.writer, user, id).await
    }

    async fn held_groups(&self) -> Result<Vec<HeldGroup>, StoreError> {
        digests::groups(&self.writer).await
    }

    async fn claim_digest(
        &self,
        group: &HeldGroup,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<DigestClaim>, StoreError> {
        digests::claim(&self.writer, group, worker, now, lease_until).await
    }

    async fn digest_sent(&self, digest_id: &str, message_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        digests::sent(&self.writer, digest_id, message_id, now).await
    }

    async fn log_for_event(&self, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
        digests::log_for_event(&self.reader, event_id).await
    }

    async fn log_for_recipient(&self, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        digests::log_for_recipient(&self.reader, email, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{read_directory, read_event};
    use crate::route::{RuleSet, route};
    use std::path::Path;

    #[tokio::test]
    async fn admits_once_counts_atomically_and_holds_past_the_threshold() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = RuleSet::load_dir(&root.join("rules")).unwrap();
        let dir = read_directory(&root.join("rules/tests/directory.jsonl")).unwrap();
        let lead = read_event(&root.join("rules/tests/events/lead.created.contact_me.json")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}/s.db", tmp.path().display()))
            .await
            .unwrap();
        let mut held = 0;
        for n in 1..=11u32 {
            let mut event = lead.clone();
            event.id = crate::event::EventId::new(format!("lead-{n}"));
            let counters = route(&event, &rules, &dir, &MemoryState::new()).counters;
            let planner = |positions: &[(DigestKey, u32)]| {
                assert_eq!(positions[0].1, n, "the post-increment position");
                let mut state = MemoryState::new();
                state.set_count(positions[0].0.clone(), positions[0].1);
                route(&event, &rules, &dir, &state)
            };
            let Admission::Pending { fresh: true, items } = store.admit(&event, &counters, &planner).await.unwrap()
            else {
                panic!("a new event is admitted fresh");
            };
            held += 6 - items.len();
            // The same id again: nothing re-planned, the same pending items, no extra count.
            let again = store
                .admit(&event, &counters, &|_| panic!("not re-planned"))
                .await
                .unwrap();
            assert!(matches!(again, Admission::Pending { fresh: false, items: ref i } if i.len() == items.len()));
            for item in items {
                store.mark_sent(item.log_id, None).await.unwrap();
            }
            store.complete(event.id.as_str()).await.unwrap();
            let done = store
                .admit(&event, &counters, &|_| panic!("not re-planned"))
                .await
                .unwrap();
            assert!(matches!(done, Admission::Done));
        }
        assert_eq!(held, 3, "the 11th lead's three emails are held, its entries are not");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM held")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(rows, 3);
    }
}
