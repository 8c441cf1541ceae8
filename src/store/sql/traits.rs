//! The store traits whose SQL is the same on both backends, implemented once
//! and compiled into each backend (`Backend`, with its `read_pool`,
//! `write_pool`, and `write_turn`: what a write off the hot path holds while it writes).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Backend, digests, events, preferences};
use crate::event::Event;
use crate::preferences::PreferenceChange;
use crate::store::{
    ArchiveStore, DigestClaim, DigestOutcome, DigestStore, DirectoryChanges, DirectoryStore, EventRecord, HeldGroup,
    LogEntry, LogStore, PreferenceChanges, Store, StoreError, record,
};

#[async_trait]
impl Store for Backend {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.read_pool()).await?;
        Ok(())
    }
}

#[async_trait]
impl DirectoryStore for Backend {
    async fn directory_changes(&self, after: i64) -> Result<DirectoryChanges, StoreError> {
        let rows = sqlx::query("SELECT seq, event_json FROM directory WHERE seq > $1 ORDER BY seq")
            .bind(after)
            .fetch_all(self.read_pool())
            .await?;
        let seq = rows.last().map_or(Ok(after), |r| r.try_get("seq"))?;
        let raw = rows
            .into_iter()
            .map(|r| r.try_get("event_json"))
            .collect::<Result<Vec<String>, _>>()?;
        Ok(DirectoryChanges {
            events: record::decode_rows(raw)?,
            seq,
        })
    }

    async fn changed_since(&self, directory: i64, preferences: i64) -> Result<bool, StoreError> {
        let changed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM directory WHERE seq > $1)
                 OR EXISTS (SELECT 1 FROM preference_changes WHERE seq > $2)",
        )
        .bind(directory)
        .bind(preferences)
        .fetch_one(self.read_pool())
        .await?;
        Ok(changed)
    }

    async fn preference_changes(&self, after: i64) -> Result<PreferenceChanges, StoreError> {
        preferences::changes(self.read_pool(), after).await
    }

    async fn record_preferences(&self, changes: &[PreferenceChange]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        preferences::record(self.write_pool(), changes, Utc::now()).await?;
        self.directory_written();
        Ok(())
    }

    fn change_hint(&self) -> Option<u64> {
        self.hint()
    }
}

#[async_trait]
impl DigestStore for Backend {
    async fn held_groups(&self) -> Result<Vec<HeldGroup>, StoreError> {
        // A read of committed rows: it need not hold up the writers.
        digests::groups(self.read_pool()).await
    }

    async fn claim_digest(
        &self,
        group: &HeldGroup,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<DigestClaim>, StoreError> {
        let _turn = self.write_turn().await?;
        digests::claim(self.write_pool(), group, worker, now, lease_until).await
    }

    async fn renew_digest(
        &self,
        digest_id: &str,
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await?;
        digests::renew(self.write_pool(), digest_id, worker, lease_until).await
    }

    async fn settle_digest(
        &self,
        digest_id: &str,
        outcome: &DigestOutcome<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        digests::settle(self.write_pool(), digest_id, outcome, now).await
    }

    async fn drop_held(
        &self,
        digest_id: &str,
        items: &[(i64, Vec<String>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        digests::drop_held(self.write_pool(), digest_id, items, now).await
    }
}

#[async_trait]
impl ArchiveStore for Backend {
    async fn archived(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Event>, StoreError> {
        events::archived(self.read_pool(), since, until).await
    }

    async fn prune_archive(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        events::prune_archive(self.write_pool(), before).await
    }
}

#[async_trait]
impl LogStore for Backend {
    async fn record_dead_letter(&self, event_id: &str, reason: &str, detail: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        events::record_dead_letter(self.write_pool(), event_id, reason, detail, Utc::now()).await
    }

    async fn event_record(&self, event_id: &str) -> Result<EventRecord, StoreError> {
        events::event_record(self.read_pool(), event_id).await
    }

    async fn log_for_event(&self, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
        digests::log_for_event(self.read_pool(), event_id).await
    }

    async fn log_for_recipient(&self, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        digests::log_for_recipient(self.read_pool(), email, limit).await
    }
}
