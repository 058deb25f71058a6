//! Audit events: one per verification, accepted or refused, for the application's audit log
//! and alerting ("set up alerts for unusual API activity", as the DanubeData seed advises).
//!
//! Every event is also a `tracing` event (`debug` for accepted, `info` for refused) with the
//! token id, owner, client address and reason. No event ever carries a secret or a hash.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::error::{AuthErrorKind, RejectReason};
use crate::id::TokenId;
use crate::record::Owner;

/// What happened to one presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When, by the verifier's clock.
    pub at: DateTime<Utc>,
    /// Accepted, or refused and why.
    pub outcome: AuditOutcome,
    /// The id the token presented, when it had one (or the record found by hash).
    pub token_id: Option<TokenId>,
    /// The owner of the record the token named, when one was found: also for a wrong secret,
    /// so repeated guesses at one team's token stand out.
    pub owner: Option<Owner>,
    /// The client address, when the caller knew it.
    pub client_ip: Option<IpAddr>,
}

/// The outcome in an [`AuditEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// The token was valid and held the required scopes.
    Accepted,
    /// The request was refused.
    Refused {
        /// What the client was told.
        kind: AuthErrorKind,
        /// The precise reason, for an invalid token.
        reason: Option<RejectReason>,
    },
}

/// Receives every [`AuditEvent`]. Called on the request path: hand the event to a channel or a
/// buffered writer, never block.
///
/// Closures work:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use apitoken::{AuditEvent, MemoryStore, Verifier};
///
/// let seen: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
/// let sink = Arc::clone(&seen);
/// let verifier = Verifier::builder(MemoryStore::new())
///     .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()))
///     .build();
/// # let _ = verifier;
/// ```
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: &AuditEvent);
}

impl<F: Fn(&AuditEvent) + Send + Sync + 'static> AuditSink for F {
    fn record(&self, event: &AuditEvent) {
        self(event)
    }
}

/// Whether a `tracing` subscriber wants the event [`trace`] would emit for an accepted
/// (`debug`) or a refused (`info`) token.
pub(crate) fn trace_enabled(accepted: bool) -> bool {
    if accepted {
        tracing::enabled!(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(tracing::Level::INFO)
    }
}

pub(crate) fn trace(event: &AuditEvent) {
    match event.outcome {
        AuditOutcome::Accepted => tracing::debug!(
            token_id = ?event.token_id,
            owner = ?event.owner,
            client_ip = ?event.client_ip,
            "token accepted"
        ),
        AuditOutcome::Refused { kind, reason } => tracing::info!(
            kind = ?kind,
            reason = ?reason,
            token_id = ?event.token_id,
            owner = ?event.owner,
            client_ip = ?event.client_ip,
            "token refused"
        ),
    }
}

impl fmt::Debug for dyn AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditSink")
    }
}
