//! Audit events: one per verification, accepted or refused, for the application's audit log
//! and alerting ("set up alerts for unusual API activity", as the DanubeData seed advises).
//!
//! Every event goes to the [`AuditSink`], and is also a `tracing` event (`debug` for
//! accepted, `info` for refused) with the token id, owner, client address and reason. Refusal
//! lines are sampled so a flood cannot flood the logs: the first per client address and reason
//! each minute, at most 100 a second in all, each line counting those left out. No event ever
//! carries a secret or a hash.

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

/// How long the refusals of one (client address, reason) pair are written as one line.
pub const REFUSAL_LOG_WINDOW_SECS: i64 = 60;
/// The most refusal lines written per second, all pairs together.
pub const REFUSAL_LOG_LINES_PER_SECOND: u32 = 100;
/// Pairs tracked at once; a pair that shares a slot with another is written as new.
const REFUSAL_LOG_SLOTS: usize = 1024;

/// Decides which refusals become `tracing` lines, so a flood of refused requests does not
/// become a flood of log lines: per (client address, kind, reason), the first refusal in each
/// [`REFUSAL_LOG_WINDOW_SECS`] window is written, with `suppressed` saying how many of the
/// pair's refusals the previous window left out; and no more than
/// [`REFUSAL_LOG_LINES_PER_SECOND`] lines a second are written in all, the next line saying
/// how many that limit left out (`suppressed_overall`). Bounded memory (1,024 slots), no
/// allocation. The [`AuditSink`] still receives every event.
pub(crate) struct RefusalLog {
    slots: Box<[std::sync::Mutex<Slot>]>,
    overall: std::sync::Mutex<Overall>,
    hasher: foldhash::fast::FixedState,
}

#[derive(Default, Clone, Copy)]
struct Slot {
    key: u64,
    window_start: i64,
    suppressed: u64,
}

#[derive(Default)]
struct Overall {
    second: i64,
    lines: u32,
    suppressed: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            slots: (0..REFUSAL_LOG_SLOTS)
                .map(|_| std::sync::Mutex::new(Slot::default()))
                .collect(),
            overall: std::sync::Mutex::new(Overall::default()),
            hasher: foldhash::fast::FixedState::with_seed(0x6170_6974_6f6b_656e),
        }
    }
}

impl RefusalLog {
    /// Writes `event` to `tracing`: accepted ones at `debug` always, refused ones at `info`
    /// as sampled.
    pub(crate) fn trace(&self, event: &AuditEvent) {
        let AuditOutcome::Refused { kind, reason } = event.outcome else {
            tracing::debug!(
                token_id = ?event.token_id,
                owner = ?event.owner,
                client_ip = ?event.client_ip,
                "token accepted"
            );
            return;
        };
        let Some((suppressed, suppressed_overall)) = self.admit(event, kind, reason) else {
            return;
        };
        tracing::info!(
            kind = ?kind,
            reason = ?reason,
            token_id = ?event.token_id,
            owner = ?event.owner,
            client_ip = ?event.client_ip,
            suppressed,
            suppressed_overall,
            "token refused"
        );
    }

    /// Whether a line is written for this refusal, with the counts of those left out.
    fn admit(
        &self,
        event: &AuditEvent,
        kind: AuthErrorKind,
        reason: Option<RejectReason>,
    ) -> Option<(u64, u64)> {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one((event.client_ip, kind, reason)) | 1;
        let now = event.at.timestamp();
        let slot_lock = &self.slots[(key >> 32) as usize % REFUSAL_LOG_SLOTS];
        // Lock order: the slot, then the overall count.
        let mut slot = slot_lock.lock().unwrap_or_else(|e| e.into_inner());
        if slot.key == key && now - slot.window_start < REFUSAL_LOG_WINDOW_SECS {
            slot.suppressed += 1;
            return None;
        }
        let mut overall = self.overall.lock().unwrap_or_else(|e| e.into_inner());
        if overall.second != now {
            overall.second = now;
            overall.lines = 0;
        }
        if overall.lines >= REFUSAL_LOG_LINES_PER_SECOND {
            overall.suppressed += 1;
            return None;
        }
        overall.lines += 1;
        let suppressed_overall = std::mem::take(&mut overall.suppressed);
        drop(overall);
        let suppressed = if slot.key == key { slot.suppressed } else { 0 };
        *slot = Slot {
            key,
            window_start: now,
            suppressed: 0,
        };
        Some((suppressed, suppressed_overall))
    }
}

impl fmt::Debug for dyn AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditSink")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, at: i64) -> AuditEvent {
        AuditEvent {
            at: DateTime::from_timestamp(at, 0).unwrap(),
            outcome: AuditOutcome::Refused {
                kind: AuthErrorKind::InvalidToken,
                reason: Some(RejectReason::UnknownToken),
            },
            token_id: None,
            owner: None,
            client_ip: Some(ip.parse().unwrap()),
        }
    }

    fn admit(log: &RefusalLog, event: &AuditEvent) -> Option<(u64, u64)> {
        let AuditOutcome::Refused { kind, reason } = event.outcome else {
            unreachable!()
        };
        log.admit(event, kind, reason)
    }

    #[test]
    fn one_line_per_address_and_reason_a_window_counting_the_rest() {
        let log = RefusalLog::default();
        let t0 = 1_800_000_000;
        assert_eq!(admit(&log, &refusal("203.0.113.9", t0)), Some((0, 0)));
        for n in 1..1000 {
            let at = t0 + n * REFUSAL_LOG_WINDOW_SECS / 1000;
            assert_eq!(admit(&log, &refusal("203.0.113.9", at)), None, "{n}");
        }
        // Another address, or another reason, is its own line.
        assert_eq!(admit(&log, &refusal("198.51.100.1", t0)), Some((0, 0)));
        let mut other = refusal("203.0.113.9", t0);
        other.outcome = AuditOutcome::Refused {
            kind: AuthErrorKind::InvalidToken,
            reason: Some(RejectReason::Revoked),
        };
        assert_eq!(admit(&log, &other), Some((0, 0)));
        // The next window's first line says how many the last one left out.
        let next = t0 + REFUSAL_LOG_WINDOW_SECS;
        assert_eq!(admit(&log, &refusal("203.0.113.9", next)), Some((999, 0)));
    }

    #[test]
    fn at_most_so_many_lines_a_second_in_all() {
        let log = RefusalLog::default();
        let t0 = 1_800_000_000;
        let lines = (0..1000)
            .filter(|n| {
                admit(&log, &refusal(&format!("10.0.{}.{}", n / 256, n % 256), t0)).is_some()
            })
            .count();
        assert_eq!(lines, REFUSAL_LOG_LINES_PER_SECOND as usize);
        let first_next = admit(&log, &refusal("192.0.2.1", t0 + 1)).unwrap();
        assert_eq!(
            first_next,
            (0, 1000 - u64::from(REFUSAL_LOG_LINES_PER_SECOND))
        );
    }
}
