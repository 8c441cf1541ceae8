//! The serving set: the rules and the templates checked against them, loaded
//! together and swapped together, so an event is always routed and worded by
//! one consistent pair. A set that fails its checks is never served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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

impl ServingSet {
    /// Loads the rules, then the templates, checked against the rules and
    /// rendered against the example events (`RULES/tests/events`) when there are any.
    pub fn load(rules_dir: &Path, templates_dir: &Path, portal_base_url: &str) -> Result<Self, LoadError> {
        let rules = RuleSet::load_dir(rules_dir).map_err(|e| LoadError::Rules(e.to_string()))?;
        let examples = example_events(rules_dir).map_err(LoadError::Examples)?;
        let count = examples.len();
        let options = RenderOptions {
            portal_base_url: portal_base_url.into(),
            examples,
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
    portal_base_url: String,
    current: RwLock<Arc<ServingSet>>,
}

impl Serving {
    pub fn load(rules_dir: &Path, templates_dir: &Path, portal_base_url: &str) -> Result<Self, LoadError> {
        let set = ServingSet::load(rules_dir, templates_dir, portal_base_url)?;
        Ok(Self {
            rules_dir: rules_dir.to_path_buf(),
            templates_dir: templates_dir.to_path_buf(),
            portal_base_url: portal_base_url.to_string(),
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
        let set = Arc::new(ServingSet::load(
            &self.rules_dir,
            &self.templates_dir,
            &self.portal_base_url,
        )?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
        Ok(set)
    }
}
