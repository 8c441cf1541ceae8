//! The worker's copy of the directory and of recipients' preferences: built
//! from the store at start, and brought up to date before each event with
//! the changes any worker recorded.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::directory::Directory;
use crate::store::{DirectoryStore, StoreError};

pub struct DirectoryCache {
    /// The store's directory as of sequence number `seq`, and its preferences as of `preferences_seq`.
    directory: RwLock<Directory>,
    seq: AtomicI64,
    preferences_seq: AtomicI64,
    /// Serialises applying changes, so they apply in sequence order.
    applying: tokio::sync::Mutex<()>,
}

impl DirectoryCache {
    /// The whole directory the store holds, with every recipient's preferences.
    pub async fn load(store: &dyn DirectoryStore) -> Result<Self, StoreError> {
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
    /// the last call. Two indexed queries that usually return nothing, so it runs per event.
    pub async fn refresh(&self, store: &dyn DirectoryStore) -> Result<(), StoreError> {
        let (seen, seen_preferences) = (
            self.seq.load(Ordering::Acquire),
            self.preferences_seq.load(Ordering::Acquire),
        );
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
