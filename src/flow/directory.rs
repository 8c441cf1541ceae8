//! The worker's copy of the directory: built from the store at start, and
//! brought up to date before each event with the changes any worker recorded.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::directory::Directory;
use crate::store::{DirectoryStore, StoreError};

pub struct DirectoryCache {
    /// The store's directory as of sequence number `seq`.
    directory: RwLock<Directory>,
    seq: AtomicI64,
    /// Serialises applying changes, so they apply in sequence order.
    applying: tokio::sync::Mutex<()>,
}

impl DirectoryCache {
    /// The whole directory the store holds.
    pub async fn load(store: &dyn DirectoryStore) -> Result<Self, StoreError> {
        let changes = store.directory_changes(0).await?;
        Ok(Self {
            directory: RwLock::new(Directory::from_events(&changes.events)),
            seq: AtomicI64::new(changes.seq),
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

    /// Applies the directory changes any worker recorded since the last call.
    /// One indexed query that usually returns nothing, so it runs per event.
    pub async fn refresh(&self, store: &dyn DirectoryStore) -> Result<(), StoreError> {
        let seen = self.seq.load(Ordering::Acquire);
        let mut changes = store.directory_changes(seen).await?;
        if changes.events.is_empty() {
            return Ok(());
        }
        let _applying = self.applying.lock().await;
        let now_seen = self.seq.load(Ordering::Acquire);
        if now_seen != seen {
            // Another task applied some meanwhile: start from where it stopped.
            changes = store.directory_changes(now_seen).await?;
        }
        {
            let mut dir = self.directory.write().unwrap_or_else(|e| e.into_inner());
            for event in &changes.events {
                dir.apply(event);
            }
        }
        self.seq.fetch_max(changes.seq, Ordering::AcqRel);
        Ok(())
    }
}
