//! The worker's copy of the directory and of recipients' preferences: built
//! from the store at start, and brought up to date before each event with
//! the changes any worker recorded.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::directory::Directory;
use crate::store::{DirectoryStore, StoreError};

pub struct DirectoryCache {
    /// The store's directory as of sequence number `seq`, and its preferences as of `preferences_seq`.
    directory: RwLock<Directory>,
    seq: AtomicI64,
    preferences_seq: AtomicI64,
    /// Serialises applying changes, so they apply in sequence order.
    applying: tokio::sync::Mutex<()>,
    /// The store's change hint when it was last asked, and when.
    asked: Mutex<Option<(u64, Instant)>>,
}

/// How long a store that counts its own changes is trusted without asking it:
/// what another process (a CLI) wrote to an SQLite file shows within this.
const TRUSTED: Duration = Duration::from_secs(1);

impl DirectoryCache {
    /// The whole directory the store holds, with every recipient's preferences.
    pub async fn load(store: &dyn DirectoryStore) -> Result<Self, StoreError> {
        let hint = store.change_hint();
        let changes = store.directory_changes(0).await?;
        let preferences = store.preference_changes(0).await?;
        let mut directory = Directory::from_events(&changes.events);
        for change in &preferences.changes {
            directory.preferences.apply(change);
        }
        Ok(Self {
            directory: RwLock::new(directory),
            seq: AtomicI64::new(changes.seq),
            preferences_seq: AtomicI64::new(preferences.seq),
            applying: tokio::sync::Mutex::new(()),
            asked: Mutex::new(hint.map(|h| (h, Instant::now()))),
        })
    }

    /// The directory as it stands; hold the guard only while routing.
    pub fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy to hold across awaits (a digest flush).
    pub fn snapshot(&self) -> Directory {
        self.read().clone()
    }

    /// Applies the directory and preference changes any worker recorded since
    /// the last call. One indexed query that usually says nothing changed, so
    /// it runs per event; skipped while the store says it changed nothing.
    pub async fn refresh(&self, store: &dyn DirectoryStore) -> Result<(), StoreError> {
        // Taken before reading, so a change committed meanwhile is read next time.
        let hint = store.change_hint();
        if let Some(hint) = hint {
            let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*asked, Some((before, at)) if before == hint && at.elapsed() < TRUSTED) {
                return Ok(());
            }
        }
        self.read_changes(store).await?;
        if let Some(hint) = hint {
            *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some((hint, Instant::now()));
        }
        Ok(())
    }

    async fn read_changes(&self, store: &dyn DirectoryStore) -> Result<(), StoreError> {
        let (seen, seen_preferences) = (
            self.seq.load(Ordering::Acquire),
            self.preferences_seq.load(Ordering::Acquire),
        );
        if !store.changed_since(seen, seen_preferences).await? {
            return Ok(());
        }
        let (mut changes, mut preferences) = tokio::try_join!(
            store.directory_changes(seen),
            store.preference_changes(seen_preferences)
        )?;
        if changes.events.is_empty() && preferences.changes.is_empty() {
            return Ok(());
        }
        let _applying = self.applying.lock().await;
        // Another task may have applied some meanwhile: start from where it stopped.
        let now_seen = self.seq.load(Ordering::Acquire);
        if now_seen != seen {
            changes = store.directory_changes(now_seen).await?;
        }
        let now_seen_preferences = self.preferences_seq.load(Ordering::Acquire);
        if now_seen_preferences != seen_preferences {
            preferences = store.preference_changes(now_seen_preferences).await?;
        }
        {
            let mut dir = self.directory.write().unwrap_or_else(|e| e.into_inner());
            for event in &changes.events {
                dir.apply(event);
            }
            for change in &preferences.changes {
                dir.preferences.apply(change);
            }
        }
        self.seq.fetch_max(changes.seq, Ordering::AcqRel);
        self.preferences_seq.fetch_max(preferences.seq, Ordering::AcqRel);
        Ok(())
    }
}
