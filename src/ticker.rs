//! Work the worker does on a clock (digest flushes, archive pruning): a tick
//! every so often until shutdown, late ticks delayed rather than bunched.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Ticker {
    interval: Interval,
}

impl Ticker {
    /// Ticks at once, then every `every`.
    pub fn new(every: Duration) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval }
    }

    /// Waits for the next tick; false once `shutdown` has fired.
    pub async fn tick(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}
