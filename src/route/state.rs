//! The state routing reads: per-referral and per-receiver statuses and digest
//! positions. The store implements it for the worker; [`MemoryState`] serves
//! `rules test`, `explain` and unit tests.

use std::collections::HashMap;

use super::{DigestKey, StateChange};

/// Read access to the router's state, as routing needs it.
pub trait StateView {
    /// The last recorded status of `referral` for the receiver partner.
    fn receiver_status(&self, referral: &str, receiver: &str) -> Option<String>;
    /// The last recorded status of the referral as a whole.
    fn referral_status(&self, referral: &str) -> Option<String>;
    /// The 1-based position of the event being routed among the items counted
    /// under `key` (0 when not yet counted, read as the first).
    fn digest_position(&self, key: &DigestKey) -> u32;
}

/// State in memory: statuses and digest counters.
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    receivers: HashMap<(String, String), String>,
    referrals: HashMap<String, String>,
    counters: HashMap<DigestKey, u32>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_receiver_status(&mut self, referral: &str, receiver: &str, status: &str) {
        self.receivers.insert((referral.into(), receiver.into()), status.into());
    }

    pub fn set_referral_status(&mut self, referral: &str, status: &str) {
        self.referrals.insert(referral.into(), status.into());
    }

    /// Sets the count a key has reached, as if that many items were counted.
    pub fn set_count(&mut self, key: DigestKey, count: u32) {
        self.counters.insert(key, count);
    }

    /// Counts one more item under `key` and returns its position.
    pub fn count(&mut self, key: &DigestKey) -> u32 {
        let n = self.counters.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    }

    /// The count reached under `key`.
    pub fn digest_position_of(&self, key: &DigestKey) -> u32 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    pub fn apply(&mut self, changes: &[StateChange]) {
        for c in changes {
            match &c.receiver {
                Some(r) => self.set_receiver_status(&c.referral, r, &c.status),
                None => self.set_referral_status(&c.referral, &c.status),
            }
        }
    }
}

impl StateView for MemoryState {
    fn receiver_status(&self, referral: &str, receiver: &str) -> Option<String> {
        self.receivers.get(&(referral.into(), receiver.into())).cloned()
    }

    fn referral_status(&self, referral: &str) -> Option<String> {
        self.referrals.get(referral).cloned()
    }

    fn digest_position(&self, key: &DigestKey) -> u32 {
        self.digest_position_of(key)
    }
}
