//! The serving set: the rules and the templates checked against them, loaded
//! together and swapped together, so an event is always routed and worded by
//! one consistent pair. A set that fails its checks is never served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::preferences::Links;
use crate::render::{RenderOptions, Templates, example_events};
use crate::route::RuleSet;

/// Rules and templates that passed their checks together.
pub struct ServingSet {
    pub rules: RuleSet,
    pub templates: Templates,
    /// How many example events the templates were rendered against.
    pub examples: usize,
}

/// Why a set cannot be served; the text carries file:line:column where known.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The rules' own errors say where they are (`rules/x.yaml:3:5: …`).
    #[error("{0}")]
    Rules(String),
    #[error("example events: {0}")]
    Examples(String),
    #[error("templates: {0}")]
    Templates(String),
}

/// Where the messages link to, from configuration: the portal, and each
/// recipient's signed preferences link when the worker serves them.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub portal_base_url: String,
    pub preferences: Option<Links>,
}

impl Addresses {
    /// As the worker links: `mail.portal_url`, and the preferences links when served.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            portal_base_url: settings.mail.portal_url.clone(),
            preferences: settings.http.preference_links(),
        }
    }

    /// The portal only: preferences links point at its notification settings.
    pub fn portal(portal_base_url: &str) -> Self {
        Self {
            portal_base_url: portal_base_url.to_owned(),
            preferences: None,
        }
    }
}

impl ServingSet {
    /// Loads the rules, then the templates, checked against the rules and
    /// rendered against the example events (`RULES/tests/events`) when there are any.
    pub fn load(rules_dir: &Path, templates_dir: &Path, addresses: &Addresses) -> Result<Self, LoadError> {
        let rules = RuleSet::load_dir(rules_dir).map_err(|e| LoadError::Rules(e.to_string()))?;
        let examples = example_events(rules_dir).map_err(LoadError::Examples)?;
        let count = examples.len();
        let options = RenderOptions {
            portal_base_url: addresses.portal_base_url.clone(),
            examples,
            preference_links: addresses.preferences.clone(),
        };
        let templates =
            Templates::load(templates_dir, &rules, options).map_err(|e| LoadError::Templates(e.to_string()))?;
        Ok(Self {
            rules,
            templates,
            examples: count,
        })
    }
}

/// The set being served, replaced whole on reload.
pub struct Serving {
    rules_dir: PathBuf,
    templates_dir: PathBuf,
    addresses: Addresses,
    current: RwLock<Arc<ServingSet>>,
}

impl Serving {
    pub fn load(rules_dir: &Path, templates_dir: &Path, addresses: Addresses) -> Result<Self, LoadError> {
        let set = ServingSet::load(rules_dir, templates_dir, &addresses)?;
        Ok(Self {
            rules_dir: rules_dir.to_path_buf(),
            templates_dir: templates_dir.to_path_buf(),
            addresses,
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// The set to use for the work at hand; a reload meanwhile does not change it.
    pub fn current(&self) -> Arc<ServingSet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the files again; a set that fails its checks is rejected and the
    /// serving one stays. Returns the new set.
    pub fn reload(&self) -> Result<Arc<ServingSet>, LoadError> {
        let set = Arc::new(ServingSet::load(&self.rules_dir, &self.templates_dir, &self.addresses)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
        Ok(set)
    }
}
