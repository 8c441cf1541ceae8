//! Integration tests: the real `referral-router run` process against this
//! machine's RabbitMQ and a real SMTP server over TCP, and the store on its own;
//! every test runs on both store backends (a SQLite file, a PostgreSQL database).

mod action_center;
mod browser;
mod console;
mod digest;
mod failures;
mod hostile;
mod mail;
mod operations;
mod preferences;
mod recovery;
mod replay;
mod robustness;
mod scale;
mod store;
mod support;
mod tls;
