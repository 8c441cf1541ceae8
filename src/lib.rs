//! referral-router: referral domain events in, notifications out.
//!
//! An event travels one way through these modules:
//!
//! - [`decode`]: bytes -> a typed [`event::Event`]; failures are permanent (dead-letter).
//! - [`directory`]: `directory.*` events build who holds which role where.
//! - [`route`]: rules from `rules/` turn (event, directory, state) into a plan
//!   of deliveries: who gets which notification, on which channel, and why.
//! - [`render`]: templates from `templates/` turn each delivery into an email
//!   (subject, HTML, text) or an Action Center entry; checked at load.
//! - [`cli`]: the rule author's tools (`rules check`, `rules test`, `explain`).

pub mod cli;
pub mod decode;
pub mod directory;
pub mod event;
pub mod render;
pub mod route;
