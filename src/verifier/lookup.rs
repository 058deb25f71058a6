//! Finding the record a token names: each format's parse, hash, lookup and constant-time
//! compare, and the timing balance on refusals.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::Verifier;
use crate::error::RejectReason;
use crate::format::FormatError;
use crate::id::TokenId;
use crate::record::TokenRecord;
use crate::scope::ScopeRequirement;
use crate::store::{StoreError, TokenStore};

impl<S: TokenStore> Verifier<S> {
    /// Work on a refusal after the lookup comparable to what a valid token costs after it:
    /// a passing scope check (the requirement against its own scopes: no allocation, whatever
    /// the record holds) and the last-use note (a read of the entry a note would write, or
    /// of the nearest one for an id the buffer does not hold), so a refused token is not
    /// measurably cheaper than an accepted one.
    pub(super) fn balance_refusal(&self, id: Option<&TokenId>, required: &ScopeRequirement) {
        let scopes = std::hint::black_box(required.scopes());
        drop(std::hint::black_box(
            self.inner.policy.check(scopes, required),
        ));
        if let (Some(last_used), Some(id)) = (&self.inner.last_used, id) {
            last_used.touch(id);
        }
    }

    /// The same for a refusal before the record's checks (unknown id, wrong secret), which
    /// also skips the clock read, the limits those checks compute and the fields they read:
    /// on the record found, or for an unknown id the limits of the verifier's stand-in (the
    /// store read a real record's fields in its place).
    pub(super) fn balance_early_refusal(
        &self,
        record: Option<&TokenRecord>,
        id: Option<&TokenId>,
        required: &ScopeRequirement,
    ) {
        std::hint::black_box(self.inner.clock.now());
        match record {
            Some(record) => {
                std::hint::black_box(self.inner.ends(record));
                record.read_checked_fields();
            }
            // The store read a real record's fields in this one's place.
            None => drop(std::hint::black_box(self.inner.ends(&self.inner.stand_in))),
        }
        self.balance_refusal(id, required);
    }

    /// Finds the record `token` names. Each format that parses the text gets its own hash,
    /// lookup and constant-time compare, in the order the formats were added, until a secret
    /// matches: the first format that parses does not win on its own, so one format's shape
    /// cannot shadow another's (`tok` before `toklive`, DCT before a canonical token whose id
    /// is all digits). A token no format's record matches costs one hash, one lookup and one
    /// compare per format that parses its text, whether any record exists or not: that
    /// number depends on the text and the configuration only, and is at most the number of
    /// formats.
    pub(super) async fn lookup(&self, token: &str) -> Result<Lookup, StoreError> {
        let inner = &*self.inner;
        let mut best: Option<FormatError> = None;
        let mut first_miss: Option<(Option<TokenId>, Option<Arc<TokenRecord>>)> = None;
        for format in &inner.formats {
            let parsed = match format.parse(token) {
                Ok(parsed) => parsed,
                Err(err) => {
                    best = Some(more_telling(best, err));
                    continue;
                }
            };
            let presented = inner.hasher.hash(parsed.secret().as_bytes());
            let found = match parsed.id() {
                Some(id) => inner.store.get(id).await?,
                None => inner.store.find_by_hash(&presented).await?,
            };
            let expected = found.as_ref().map_or(&inner.dummy_hash, |s| &s.hash);
            let secret_matches: bool = presented.ct_eq(expected).into();
            if let Some(stored) = &found
                && secret_matches
            {
                return Ok(Lookup::Matched(Arc::clone(&stored.record)));
            }
            // The first record found is the one reported (its owner in the audit event), else
            // the first id presented.
            let report = match &first_miss {
                None => true,
                Some((_, None)) => found.is_some(),
                Some((_, Some(_))) => false,
            };
            if report {
                first_miss = Some((parsed.id().copied(), found.map(|s| s.record)));
            }
        }
        Ok(match first_miss {
            Some((presented_id, record)) => Lookup::Missed {
                record,
                presented_id,
            },
            None => Lookup::Malformed(match best.unwrap_or(FormatError::Empty) {
                FormatError::BadChecksum => RejectReason::BadChecksum,
                other => RejectReason::Malformed(other),
            }),
        })
    }
}

/// What [`Verifier::lookup`] found for a token.
pub(super) enum Lookup {
    /// A format's record whose hash matches the presented secret.
    Matched(Arc<TokenRecord>),
    /// At least one format parsed the text, and no record matched: the first record found
    /// (its secret did not match) with the id its format read, or no record and the first id.
    Missed {
        record: Option<Arc<TokenRecord>>,
        presented_id: Option<TokenId>,
    },
    /// No format parsed the text: the most telling reason.
    Malformed(RejectReason),
}

/// Which of two parse errors says more about a token no format accepted: a bad checksum
/// (the token had the shape of a format) over anything else, and anything over a wrong prefix.
fn more_telling(earlier: Option<FormatError>, later: FormatError) -> FormatError {
    match earlier {
        None => later,
        Some(FormatError::BadChecksum) => FormatError::BadChecksum,
        Some(FormatError::WrongPrefix) => later,
        Some(_) if later == FormatError::BadChecksum => later,
        Some(earlier) => earlier,
    }
}
