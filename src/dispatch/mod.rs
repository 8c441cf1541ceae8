//! Dispatch: planned deliveries out to people. [`email`] sends MIME messages
//! over SMTP (or into `.eml` files); [`action_center`] stores in-app entries
//! and publishes them. What they say comes from the `render` step.

pub mod action_center;
pub mod email;
