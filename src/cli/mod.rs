//! The rule and template authors' tools: `rules check`, `rules test`,
//! `explain`, `templates check`, `preview`. Each returns its report as text so
//! tests can read exactly what a person sees.

pub mod console;
pub mod dlq;
pub mod explain;
pub mod fixtures;
pub mod ops;
pub mod publish;
pub mod replay;
pub mod templates;

use std::path::Path;

use crate::decode::{read_directory, read_event, read_jsonl};
use crate::directory::Directory;
use crate::event::Event;
use crate::route::RuleSet;

/// `rules check`: load and validate, including that every template a rule
/// names exists in `templates`; the summary on success, every error on failure.
pub fn rules_check(dir: &Path, templates: &Path) -> Result<String, String> {
    let set = RuleSet::load_dir(dir).map_err(|e| e.to_string())?;
    let options = crate::render::RenderOptions {
        portal_base_url: templates::PREVIEW_PORTAL.into(),
        examples: Vec::new(),
        preference_links: None,
    };
    match crate::render::Templates::load(templates, &set, options) {
        Ok(loaded) => set.check_templates(|name| loaded.has(name)),
        // A template with errors still exists; `templates check` reports its errors.
        Err(_) => {
            let names = crate::render::source::notification_names(templates);
            set.check_templates(|name| names.iter().any(|n| n == name))
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "rules ok: {} rules, {} notifications, {} selectors (hash {})",
        set.rules.len(),
        set.notifications.len(),
        set.selectors.len(),
        set.hash
    ))
}

/// State as a rule author describes it (`rules test` fixtures, `explain`
/// flags): the status already recorded for the event's referral and each of
/// its receivers, and this event's position among the day's counted items.
pub fn seeded_state(
    event: &Event,
    rules: &RuleSet,
    dir: &Directory,
    receiver_status: Option<&str>,
    referral_status: Option<&str>,
    digest_position: Option<u32>,
) -> crate::route::MemoryState {
    let mut state = crate::route::MemoryState::new();
    if let Some(referral) = event.referral() {
        let id = referral.id.as_str();
        if let Some(s) = referral_status {
            state.set_referral_status(id, s);
        }
        if let Some(s) = receiver_status {
            for r in event.receivers().iter().filter_map(|r| r.partner_id.as_ref()) {
                state.set_receiver_status(id, r.as_str(), s);
            }
        }
    }
    if let Some(position) = digest_position {
        for key in crate::route::route(event, rules, dir, &state).counters {
            state.set_count(key, position);
        }
    }
    state
}
