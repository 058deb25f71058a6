//! Scopes: what a token may do, and least-privilege checks against what a route needs.
//!
//! A [`Scope`] is an RFC 6749 §3.3 scope token such as `vps:read`, `read:databases` or `admin`.
//! Both segment orders in the seeds work, because scopes are compared as text, segment by
//! segment (`:` separates segments), and byte for byte: `VPS:read` is not `vps:read`.
//!
//! A token's scopes are a [`ScopeSet`]; a route's needs are a [`ScopeRequirement`] (all of, or
//! any of, a set). Without configuration a granted scope satisfies only the identical required
//! scope: no catch-all exists unless the application creates one. A [`ScopePolicy`] adds
//! wildcards (`vps:*`, `*`) and implications (`admin` implies `*`; `write` implies `read`),
//! always on whole segments, so `vps:*` never covers `vpsx:read`. See `docs/scopes.md`.
//!
//! ```
//! use apitoken::{ScopePolicy, ScopeRequirement, ScopeSet};
//!
//! let granted = ScopeSet::parse("vps:* read:databases")?;
//! let strict = ScopePolicy::strict();
//! let wild = ScopePolicy::strict().with_wildcards();
//!
//! let need = ScopeRequirement::all(["vps:read"])?;
//! assert!(strict.check(&granted, &need).is_err()); // `vps:*` is only text here
//! assert!(wild.check(&granted, &need).is_ok());
//! assert!(wild.check(&granted, &ScopeRequirement::all(["vpsx:read"])?).is_err());
//! # Ok::<(), apitoken::InvalidScope>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest scope accepted.
pub const MAX_SCOPE_LEN: usize = 128;

/// The separator between segments of a scope.
const SEGMENT: char = ':';
const WILDCARD: &str = "*";

/// One scope, such as `vps:read`.
///
/// Valid scopes are 1 to [`MAX_SCOPE_LEN`] characters from RFC 6749 §3.3's set: visible ASCII
/// except `"` and `\`, and no space.
///
/// ```
/// use apitoken::Scope;
///
/// let scope: Scope = "storage:delete".parse()?;
/// assert_eq!(scope.as_str(), "storage:delete");
/// assert!(Scope::new("vps read").is_err());
/// assert!(Scope::new("say\"hi\"").is_err());
/// # Ok::<(), apitoken::InvalidScope>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(Box<str>);

/// Text that is not a valid [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope: expected 1 to {MAX_SCOPE_LEN} visible ASCII characters other than '\"' and '\\'"
)]
#[non_exhaustive]
pub struct InvalidScope;

impl Scope {
    /// Validates `text` as a scope.
    pub fn new(text: &str) -> Result<Self, InvalidScope> {
        let ok = !text.is_empty()
            && text.len() <= MAX_SCOPE_LEN
            && text
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if ok {
            Ok(Self(text.into()))
        } else {
            Err(InvalidScope)
        }
    }

    /// The scope's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// A set of scopes: what a token was granted. Sorted, without duplicates.
///
/// Serializes as a JSON array of strings; [`parse`](Self::parse) and `Display` use the
/// space-delimited form of RFC 6749 §3.3.
///
/// ```
/// use apitoken::ScopeSet;
///
/// let scopes = ScopeSet::parse("vps:write vps:read vps:read")?;
/// assert_eq!(scopes.len(), 2);
/// assert!(scopes.contains("vps:read"));
/// assert_eq!(scopes.to_string(), "vps:read vps:write");
/// # Ok::<(), apitoken::InvalidScope>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(
    // Shared, so records with the same scopes can share one copy (the memory store and the
    // cache do); `None` is the empty set, without an allocation.
    Option<Arc<[Scope]>>,
);

impl ScopeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self(None)
    }

    /// From sorted, deduplicated scopes.
    fn from_sorted(scopes: Vec<Scope>) -> Self {
        Self((!scopes.is_empty()).then(|| scopes.into()))
    }

    /// Whether both sets are one shared copy.
    #[cfg(test)]
    pub(crate) fn is_shared_with(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn as_slice(&self) -> &[Scope] {
        self.0.as_deref().unwrap_or_default()
    }

    /// Validates each scope in `scopes`.
    pub fn try_from_iter<I, S>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        scopes.into_iter().map(|s| Scope::new(s.as_ref())).collect()
    }

    /// Parses RFC 6749's space-delimited list. Runs of spaces are tolerated; any other
    /// whitespace is an error.
    pub fn parse(text: &str) -> Result<Self, InvalidScope> {
        Self::try_from_iter(text.split(' ').filter(|s| !s.is_empty()))
    }

    /// Adds a scope; returns whether it was new.
    pub fn insert(&mut self, scope: Scope) -> bool {
        match self.as_slice().binary_search(&scope) {
            Ok(_) => false,
            Err(at) => {
                let mut scopes = self.as_slice().to_vec();
                scopes.insert(at, scope);
                *self = Self::from_sorted(scopes);
                true
            }
        }
    }

    /// Whether the set holds exactly this scope (no wildcards, no implications; for those ask
    /// a [`ScopePolicy`]).
    pub fn contains(&self, scope: &str) -> bool {
        self.as_slice()
            .binary_search_by(|s| s.as_str().cmp(scope))
            .is_ok()
    }

    /// The scopes in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.as_slice().iter()
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = iter.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self::from_sorted(scopes)
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Scope>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// What a route needs: all of a set of scopes, or any one of them.
///
/// ```
/// use apitoken::ScopeRequirement;
///
/// let read = ScopeRequirement::all(["vps:read"])?;
/// let either = ScopeRequirement::any(["vps:write", "admin"])?;
/// assert!(ScopeRequirement::none().is_none());
/// # let _ = (read, either);
/// # Ok::<(), apitoken::InvalidScope>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeRequirement {
    scopes: ScopeSet,
    any: bool,
}

impl ScopeRequirement {
    /// No scope needed: any valid token passes.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every one of `scopes` is needed.
    pub fn all<I, S>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self {
            scopes: ScopeSet::try_from_iter(scopes)?,
            any: false,
        })
    }

    /// At least one of `scopes` is needed. An empty list needs nothing.
    pub fn any<I, S>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self {
            scopes: ScopeSet::try_from_iter(scopes)?,
            any: true,
        })
    }

    /// The scopes named.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// Whether one scope of the set suffices.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// Whether nothing is required.
    pub fn is_none(&self) -> bool {
        self.scopes.is_empty()
    }
}

/// [`ScopePolicy::strict`] as a static, so a [`Principal`](crate::Principal) under the default
/// policy holds a plain reference instead of a shared counter every verifying thread writes.
pub(crate) static STRICT: ScopePolicy = ScopePolicy {
    wildcards: false,
    catch_all: Vec::new(),
    implies: Vec::new(),
    segment_implies: Vec::new(),
};

/// How granted scopes cover required ones. The default, [`strict`](Self::strict), is exact
/// match only.
///
/// ```
/// use apitoken::{ScopePolicy, ScopeRequirement, ScopeSet};
///
/// // `admin` may do everything; `write` includes `read` in either segment order.
/// let policy = ScopePolicy::strict()
///     .with_wildcards()
///     .imply("admin", "*")?
///     .imply_segment("write", "read")?;
///
/// let admin = ScopeSet::parse("admin")?;
/// assert!(policy.check(&admin, &ScopeRequirement::all(["storage:delete"])?).is_ok());
///
/// let writer = ScopeSet::parse("vps:write write:policies")?;
/// assert!(policy.check(&writer, &ScopeRequirement::all(["vps:read", "read:policies"])?).is_ok());
/// assert!(policy.check(&writer, &ScopeRequirement::all(["vps:delete"])?).is_err());
/// # Ok::<(), apitoken::InvalidScope>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopePolicy {
    wildcards: bool,
    /// Granted scopes that cover every scope.
    catch_all: Vec<Scope>,
    /// Transitive closure of the scope implications, recomputed when one is added, so a
    /// check never follows chains.
    implies: Vec<(Scope, Scope)>,
    /// Transitive closure of the segment implications, recomputed when one is added.
    segment_implies: Vec<(Box<str>, Box<str>)>,
}

impl ScopePolicy {
    /// Exact match only: a granted scope covers the identical required scope and nothing
    /// else. `*` and `vps:*` are plain text.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Treats a `*` segment in a granted scope as a wildcard: it matches any one non-empty
    /// segment, and as the last segment it matches one or more (`vps:*` covers `vps:read` and
    /// `vps:read:own` but not `vps` or `vpsx:read`; `*` alone covers every scope).
    #[must_use]
    pub fn with_wildcards(mut self) -> Self {
        self.wildcards = true;
        self
    }

    /// A granted `scope` covers every scope, as Sanctum's `*` ability or DB Audit's `admin`.
    /// Unlike [`with_wildcards`](Self::with_wildcards), `*` segments elsewhere (`vps:*`) stay
    /// plain text.
    ///
    /// ```
    /// use apitoken::{ScopePolicy, ScopeSet};
    ///
    /// let policy = ScopePolicy::strict().catch_all("admin")?;
    /// assert!(policy.covers(&ScopeSet::parse("admin")?, "write:policies"));
    /// assert!(!policy.covers(&ScopeSet::parse("read:logs")?, "write:policies"));
    /// # Ok::<(), apitoken::InvalidScope>(())
    /// ```
    pub fn catch_all(mut self, scope: &str) -> Result<Self, InvalidScope> {
        let scope = Scope::new(scope)?;
        if !self.catch_all.contains(&scope) {
            self.catch_all.push(scope);
        }
        Ok(self)
    }

    /// Laravel Sanctum's ability check: the ability `*` grants everything; every other ability
    /// matches exactly (`in_array`), with no wildcard segments.
    pub fn sanctum() -> Self {
        Self {
            catch_all: vec![Scope(WILDCARD.into())],
            ..Self::default()
        }
    }

    /// A granted `from` also grants `to` (and whatever `to` covers under this policy), such as
    /// `imply("admin", "*")` together with [`with_wildcards`](Self::with_wildcards).
    pub fn imply(mut self, from: &str, to: &str) -> Result<Self, InvalidScope> {
        let pair = (Scope::new(from)?, Scope::new(to)?);
        self.implies = transitive_closure(std::mem::take(&mut self.implies), pair);
        Ok(self)
    }

    /// A granted scope with the segment `from` also grants the same scope with `to` in that
    /// place: `imply_segment("write", "read")` makes `vps:write` grant `vps:read` and
    /// `write:databases` grant `read:databases`. Chains are followed (`admin` → `write` →
    /// `read`).
    pub fn imply_segment(mut self, from: &str, to: &str) -> Result<Self, InvalidScope> {
        let valid = |s: &str| Scope::new(s).is_ok() && !s.contains(SEGMENT) && s != WILDCARD;
        if !valid(from) || !valid(to) {
            return Err(InvalidScope);
        }
        let pair: (Box<str>, Box<str>) = (from.into(), to.into());
        self.segment_implies = transitive_closure(std::mem::take(&mut self.segment_implies), pair);
        Ok(self)
    }

    /// Whether `granted` covers the single scope `required`.
    pub fn covers(&self, granted: &ScopeSet, required: &str) -> bool {
        if granted.contains(required) {
            return true;
        }
        granted
            .iter()
            .any(|g| self.scope_covers(g.as_str(), required))
    }

    /// Whether a holder of `granted` may give `scope` to another token without the other token
    /// gaining anything: `granted` covers `scope` and everything `scope` grants under this
    /// policy (its implications, segment implications, and, for a catch-all, every scope).
    /// Token-creation endpoints use it so that no token can mint a stronger one.
    ///
    /// ```
    /// use apitoken::{ScopePolicy, ScopeSet};
    ///
    /// let policy = ScopePolicy::strict().with_wildcards().imply("org:admin", "*")?;
    /// let holder = ScopeSet::parse("org:*")?;
    /// assert!(policy.covers(&holder, "org:admin"));
    /// // …but `org:admin` implies `*`, which `org:*` does not cover.
    /// assert!(!policy.can_delegate(&holder, "org:admin"));
    /// assert!(policy.can_delegate(&holder, "org:read"));
    /// # Ok::<(), apitoken::InvalidScope>(())
    /// ```
    pub fn can_delegate(&self, granted: &ScopeSet, scope: &str) -> bool {
        if !self.covers(granted, scope) {
            return false;
        }
        let holds_catch_all = || granted.iter().any(|g| self.grants_everything(g.as_str()));
        if self.grants_everything(scope) && !holds_catch_all() {
            return false;
        }
        let implied_ok = self
            .implies
            .iter()
            .filter(|(from, _)| from.as_str() == scope)
            .all(|(_, to)| self.covers(granted, to.as_str()));
        let segments: Vec<&str> = scope.split(SEGMENT).collect();
        let segments_ok = self.segment_implies.iter().all(|(from, to)| {
            segments.iter().enumerate().all(|(i, seg)| {
                if **seg != **from {
                    return true;
                }
                let mut derived = segments.clone();
                derived[i] = to;
                self.covers(granted, &derived.join(":"))
            })
        });
        implied_ok && segments_ok
    }

    /// Whether one granted scope covers every scope: a catch-all, a wildcard `*`, or a scope
    /// that implies one of those.
    fn grants_everything(&self, scope: &str) -> bool {
        let direct = |s: &str| {
            self.catch_all.iter().any(|c| c.as_str() == s) || (self.wildcards && s == WILDCARD)
        };
        direct(scope)
            || self
                .implies
                .iter()
                .any(|(from, to)| from.as_str() == scope && direct(to.as_str()))
    }

    /// Checks a requirement. On failure returns the scopes that were missing: for an all-of
    /// requirement those not covered, for an any-of requirement all of them.
    pub fn check(&self, granted: &ScopeSet, required: &ScopeRequirement) -> Result<(), ScopeSet> {
        if required.is_none() {
            return Ok(());
        }
        if required.any {
            if required
                .scopes
                .iter()
                .any(|r| self.covers(granted, r.as_str()))
            {
                return Ok(());
            }
            return Err(required.scopes.clone());
        }
        // The common case, everything held, without building a set of what is missing.
        if required
            .scopes
            .iter()
            .all(|r| self.covers(granted, r.as_str()))
        {
            return Ok(());
        }
        let missing: ScopeSet = required
            .scopes
            .iter()
            .filter(|r| !self.covers(granted, r.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Whether one granted scope, or any scope it implies, covers `required`.
    fn scope_covers(&self, granted: &str, required: &str) -> bool {
        self.covers_directly(granted, required)
            || self
                .implies
                .iter()
                .filter(|(from, _)| from.as_str() == granted)
                .any(|(_, to)| self.covers_directly(to.as_str(), required))
    }

    fn covers_directly(&self, granted: &str, required: &str) -> bool {
        granted == required
            || self.catch_all.iter().any(|c| c.as_str() == granted)
            // A lone `*` covers every scope, empty segments included (`:x`), as `can_delegate`
            // assumes when it treats `*` as a catch-all.
            || (self.wildcards && granted == WILDCARD)
            || self.segments_cover(granted, required)
    }

    /// Segment-by-segment comparison with wildcards and segment implications.
    fn segments_cover(&self, granted: &str, required: &str) -> bool {
        if !self.wildcards && self.segment_implies.is_empty() {
            return false;
        }
        let mut g = granted.split(SEGMENT).peekable();
        let mut r = required.split(SEGMENT);
        loop {
            match (g.next(), r.next()) {
                (None, None) => return true,
                (Some(gs), Some(rs)) => {
                    let wild = self.wildcards && gs == WILDCARD && !rs.is_empty();
                    if wild && g.peek().is_none() {
                        // A trailing `*` takes the rest, which is at least this segment.
                        return true;
                    }
                    let implied = self
                        .segment_implies
                        .iter()
                        .any(|(from, to)| **from == *gs && **to == *rs);
                    if !(gs == rs || wild || implied) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }
}

/// Adds `pair` to `pairs` and closes the relation: a → b and b → c give a → c. Self-pairs are
/// left out (a cycle implies nothing new). Runs when a policy is configured, never per check.
fn transitive_closure<T: Clone + PartialEq>(mut pairs: Vec<(T, T)>, pair: (T, T)) -> Vec<(T, T)> {
    if pair.0 != pair.1 && !pairs.contains(&pair) {
        pairs.push(pair);
    }
    loop {
        let mut added = Vec::new();
        for (a, b) in &pairs {
            for (c, d) in &pairs {
                let derived = (a.clone(), d.clone());
                if b == c && a != d && !pairs.contains(&derived) && !added.contains(&derived) {
                    added.push(derived);
                }
            }
        }
        if added.is_empty() {
            return pairs;
        }
        pairs.extend(added);
    }
}

#[cfg(test)]
mod tests;
