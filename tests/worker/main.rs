//! Integration tests: the real `referral-router run` process against this
//! machine's RabbitMQ, a real SMTP server over TCP and its own SQLite file.

mod action_center;
mod digest;
mod failures;
mod hostile;
mod mail;
mod operations;
mod recovery;
mod support;
