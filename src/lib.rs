//! referral-router: referral domain events in, notifications out.
//!
//! An event travels one way through these modules:
//!
//! - [`consume`]: the broker subscription (via [`broker`]): reconnects, bounded
//!   concurrency, the ordering gate, and the one place a message is acked,
//!   dead-lettered or requeued.
//! - [`decode`]: bytes (or a file) -> a typed [`event::Event`]; failures are permanent (dead-letter).
//! - [`directory`]: `directory.*` events build who holds which role where;
//!   with it, the [`preferences`] recipients chose (and the signed links to them).
//! - [`route`]: rules from `rules/` turn (event, directory, state) into a plan
//!   of deliveries: who gets which notification, on which channel, and why.
//! - [`serving`]: the rules and the templates checked against them, swapped together.
//! - [`flow`]: routes one event and admits it to the [`store`] (idempotency,
//!   state, notification log), then hands its deliveries to dispatch.
//! - [`render`]: templates from `templates/` turn each delivery into an email
//!   (subject, HTML, text) or an Action Center entry; checked at load.
//! - [`dispatch`]: the one send path per channel, for events and [`digest`]s alike.
//! - [`digest`]: held deliveries, claimed per recipient and sent as one digest.
//! - [`replay`]: the same routing over a sequence of events, state carried in
//!   memory, nothing sent; and the difference two rule sets make.
//! - [`app`]: builds each stage once with the parts it uses, and runs them.
//!
//! Around the flow: [`config`] (settings), [`error`] (dispositions and failures),
//! [`telemetry`] (logs, metrics), [`http`] (health, metrics, Action Center API),
//! and [`cli`] (the operators' and authors' tools; nothing else imports it).

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
pub mod preferences;
pub mod preview;
pub mod render;
pub mod replay;
pub mod route;
pub mod serving;
pub mod signed;
pub mod store;
pub mod telemetry;
pub mod ticker;
