//! What happens to a message when processing it fails: each error knows its
//! disposition, and [`ProcessError::disposition`] is the one place that decides.

use std::time::Duration;

use crate::decode::DecodeError;
use crate::store::StoreError;

/// The end of a message's road.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or nothing to do): ack.
    Ack,
    /// A transient failure: try again after a backoff.
    Retry(String),
    /// Can never succeed: to the dead-letter queue with a reason, then ack.
    DeadLetter { reason: String, detail: String },
    /// Stop now (shutting down) and let the broker deliver it again later.
    Requeue,
    /// Another worker is processing the same event: look again after this
    /// long. Not a failure, so it does not use up an attempt.
    Later(Duration),
}

/// Why processing one message stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("mail server: {0}")]
    Mail(String),
    #[error("broker: {0}")]
    Broker(String),
    #[error("another worker holds the event; retry in {0:?}")]
    Busy(Duration),
    /// A bug met this message; counted, and retried like an outage.
    #[error("processing panicked: {0}")]
    Panicked(String),
}

/// Why one delivery did not go out.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It never can: the server refused it for good (5xx), or it cannot be
    /// rendered or built. The delivery is marked failed and not retried.
    #[error("{0}")]
    Permanent(String),
    #[error("mail server: {0}")]
    Mail(String),
    #[error("broker: {0}")]
    Broker(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It cannot go out yet, for a reason the text gives; a later attempt may.
    #[error("{0}")]
    NotYet(String),
    /// Another worker took the send over while this one waited; it is theirs now.
    #[error("taken over by another worker")]
    TakenOver,
}

impl From<Failure> for ProcessError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Permanent(e) | Failure::Mail(e) | Failure::NotYet(e) => ProcessError::Mail(e),
            Failure::Broker(e) => ProcessError::Broker(e),
            Failure::Store(e) => ProcessError::Store(e),
            Failure::TakenOver => ProcessError::Busy(Duration::from_millis(500)),
        }
    }
}

impl ProcessError {
    pub fn disposition(&self) -> Disposition {
        match self {
            ProcessError::Decode(e) => Disposition::DeadLetter {
                reason: e.kind().to_string(),
                detail: e.to_string(),
            },
            ProcessError::Store(_) | ProcessError::Mail(_) | ProcessError::Broker(_) | ProcessError::Panicked(_) => {
                Disposition::Retry(self.to_string())
            }
            ProcessError::Busy(wait) => Disposition::Later(*wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_dead_lettered_and_outages_are_retried() {
        let bad = ProcessError::Decode(DecodeError::UnknownType("x".into()));
        assert!(matches!(bad.disposition(), Disposition::DeadLetter { reason, .. } if reason == "unknown_type"));
        assert!(matches!(
            ProcessError::Mail("421".into()).disposition(),
            Disposition::Retry(_)
        ));
        let busy = ProcessError::Busy(Duration::from_secs(1));
        assert_eq!(busy.disposition(), Disposition::Later(Duration::from_secs(1)));
    }
}
