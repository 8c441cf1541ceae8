//! referral-router: referral domain events in, notifications out.
//!
//! An event travels one way through these modules:
//!
//! - [`consume`]: the broker subscription (via [`broker`]): reconnects, bounded
//!   concurrency, and the one place a message is acked, dead-lettered or requeued.
//! - [`decode`]: bytes -> a typed [`event::Event`]; failures are permanent (dead-letter).
//! - [`directory`]: `directory.*` events build who holds which role where.
//! - [`route`]: rules from `rules/` turn (event, directory, state) into a plan
//!   of deliveries: who gets which notification, on which channel, and why.
//! - [`render`]: templates from `templates/` turn each delivery into an email
//!   (subject, HTML, text) or an Action Center entry; checked at load.
//! - [`store`]: the plan is made durable (idempotency, state, notification log).
//! - [`dispatch`]: rendered through the [`dispatch::Renderer`] seam, out by email and Action Center.
//! - [`flow`]: those steps in order for one event; [`app`] builds and runs it all.
//! - [`digest`]: held deliveries, claimed per recipient and sent as one digest.
//!
//! Around the flow: [`config`] (settings), [`error`] (dispositions),
//! [`telemetry`] (logs, metrics), [`http`] (health, metrics, Action Center API),
//! and [`cli`] (the rule author's tools).

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consume;
pub mod decode;
pub mod digest;
pub mod directory;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod flow;
pub mod http;
pub mod render;
pub mod route;
pub mod serving;
pub mod store;
pub mod telemetry;
