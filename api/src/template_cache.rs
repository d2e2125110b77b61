//! Parsed templates kept in memory, so starting a verification neither reads its template
//! from Postgres nor compiles it again on every request.
//!
//! The API only uses a template to refuse, up front, a request that could never be sent
//! (unknown template, missing variable); the worker reads the template's current body when
//! it sends. A cached entry is therefore never used to render anything. Edits made through
//! this process drop the entry at once; edits made through another API replica are seen
//! once the entry is [`FRESH_FOR`] old, and until then the worst outcome is a request
//! accepted for a template that was just deleted, which the worker dead-letters with that
//! reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upon::Engine;
use verify_common::db::{DbError, Pool, templates};
use verify_common::domain::{TemplateBody, TemplateError, TemplateId, default_template_text};

use crate::expiring::ExpiringMap;

/// How long a stored template is trusted without reading it again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(5);
/// Most stored templates kept; a client probing random ids cannot grow memory past this.
const CAPACITY: usize = 4_096;

/// Why a template could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("template {0} does not exist")]
    NotFound(TemplateId),
    #[error("there is no built-in text for {0:?}")]
    NoBuiltIn(String),
    /// The stored body no longer parses (it was valid when written; the rules changed).
    #[error(transparent)]
    Invalid(#[from] TemplateError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Stored templates by id, and the built-in texts by language.
pub(crate) struct TemplateCache {
    engine: Arc<Engine<'static>>,
    stored: ExpiringMap<TemplateId, Result<Arc<TemplateBody>, LookupError>>,
    built_in: Mutex<HashMap<String, Arc<TemplateBody>>>,
}

impl TemplateCache {
    pub(crate) fn new(engine: Arc<Engine<'static>>) -> Self {
        Self {
            engine,
            stored: ExpiringMap::new(FRESH_FOR, CAPACITY, Result::is_ok),
            built_in: Mutex::new(HashMap::new()),
        }
    }

    /// The parsed body of stored template `id`.
    ///
    /// # Errors
    /// [`LookupError`] when it does not exist, does not parse or cannot be read.
    pub(crate) async fn stored(
        &self,
        pool: &Pool,
        id: TemplateId,
    ) -> Result<Arc<TemplateBody>, LookupError> {
        self.stored
            .get_or_load(id, || async {
                let record = templates::find_template(pool, id)
                    .await?
                    .ok_or(LookupError::NotFound(id))?;
                Ok(Arc::new(TemplateBody::parse(&self.engine, &record.body)?))
            })
            .await
    }

    /// The parsed built-in text for `language`. These never change while the process runs.
    ///
    /// # Errors
    /// [`LookupError::NoBuiltIn`] for a language without one.
    pub(crate) fn built_in(&self, language: &str) -> Result<Arc<TemplateBody>, LookupError> {
        let mut parsed = self.built_in.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(body) = parsed.get(language) {
            return Ok(Arc::clone(body));
        }
        let text = default_template_text(language)
            .ok_or_else(|| LookupError::NoBuiltIn(language.to_owned()))?;
        let body = Arc::new(TemplateBody::parse(&self.engine, text)?);
        parsed.insert(language.to_owned(), Arc::clone(&body));
        Ok(body)
    }

    /// Drops template `id`, after it was changed or deleted through this process.
    pub(crate) fn forget(&self, id: TemplateId) {
        self.stored.remove(&id);
    }
}
