//! The order messages are processed in: directory events one at a time, after
//! everything before them and before everything after them; other events side
//! by side. And one task per event id: a redelivered copy waits for the first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
pub struct Gate {
    /// Directory events hold it exclusively, everything else shared, taken in
    /// queue order: a directory change is applied before later events route.
    order: Arc<RwLock<()>>,
    processing: Mutex<HashSet<String>>,
}

/// A turn in the order, held until the message is settled.
pub enum Turn {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Held while an event is processed; a redelivered copy waits for it.
pub struct Owned<'a> {
    gate: &'a Gate,
    id: String,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.gate
            .processing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Gate {
    /// The routing key is the event type by contract; a lying key only costs ordering, not correctness.
    pub async fn turn(&self, routing_key: &str) -> Turn {
        if routing_key.starts_with("directory.") {
            Turn::Exclusive(self.order.clone().write_owned().await)
        } else {
            Turn::Shared(self.order.clone().read_owned().await)
        }
    }

    /// Waits until no other task is processing `id`, then takes it.
    pub async fn own(&self, id: &str) -> Owned<'_> {
        loop {
            if self
                .processing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string())
            {
                return Owned {
                    gate: self,
                    id: id.to_string(),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
