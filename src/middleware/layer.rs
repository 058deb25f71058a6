//! [`AuthLayer`]: configuration, applied to a service to make an [`Auth`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::client_addr::TrustedProxies;
use super::credentials::Credentials;
use super::response::JsonResponder;
use super::service::Auth;
use crate::policy::Policy;
use crate::rate_limit::{FailureThrottle, RateLimitPolicy, RateLimitStep, RateLimiter};
use crate::scope::ScopeRequirement;
use crate::verifier::Verifier;

/// Authenticates every request with a [`Verifier`]; see the [module documentation](super).
///
/// A request with a valid token reaches the inner service with a
/// [`Principal`](crate::Principal) in its extensions. Any other request is answered by the
/// [`Responder`](super::Responder) (by default [`JsonResponder`]) and never reaches the inner
/// service. Cheap to clone.
pub struct AuthLayer<S, R = JsonResponder> {
    pub(crate) verifier: Verifier<S>,
    pub(crate) credentials: Arc<Credentials>,
    pub(crate) required: Arc<ScopeRequirement>,
    pub(crate) responder: R,
    pub(crate) allow_anonymous: bool,
    pub(crate) proxies: Arc<TrustedProxies>,
    pub(crate) rate_limit: Option<Arc<RateLimitStep>>,
    pub(crate) throttle: Option<Arc<FailureThrottle>>,
    /// Added with [`policy`](Self::policy).
    added: Vec<Arc<dyn Policy>>,
    /// What the layer runs after the verifier's own policies: the throttle, the rate limit,
    /// then the added ones. Made again by each setter.
    pub(crate) policies: Vec<Arc<dyn Policy>>,
}

impl<S> AuthLayer<S> {
    /// Authenticates with `verifier`, reading `Authorization: Bearer` and answering with
    /// [`JsonResponder`].
    pub fn new(verifier: Verifier<S>) -> Self {
        Self {
            verifier,
            credentials: Arc::new(Credentials::bearer()),
            required: Arc::new(ScopeRequirement::none()),
            responder: JsonResponder::new(),
            allow_anonymous: false,
            proxies: Arc::new(TrustedProxies::none()),
            rate_limit: None,
            throttle: None,
            added: Vec::new(),
            policies: Vec::new(),
        }
    }
}

impl<S, R> AuthLayer<S, R> {
    /// Where to read the token. Default: [`Credentials::bearer`].
    #[must_use]
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Arc::new(credentials);
        self
    }

    /// Scopes every request through this layer needs. Per-route needs go in a
    /// [`RequireScopesLayer`](super::RequireScopesLayer) instead.
    #[must_use]
    pub fn require(mut self, required: ScopeRequirement) -> Self {
        self.required = Arc::new(required);
        self
    }

    /// Lets requests *without* credentials through, with no `Principal` in their extensions
    /// (handlers take `Option<Principal>`). Requests with bad credentials are still refused.
    #[must_use]
    pub fn allow_anonymous(mut self) -> Self {
        self.allow_anonymous = true;
        self
    }

    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers name the client. Default: none,
    /// so the client is the connection's peer. The layer puts the address it settles on in the
    /// request's extensions as [`ClientIp`](super::ClientIp) and checks it against a token's
    /// allowlist.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// Limits how often each token (or owner) may be used: after a successful verification
    /// (so a refused request spends nothing), one request of the budget `policy` gives the
    /// token is spent in `limiter`; a request over budget is answered 429 with `Retry-After`
    /// and the `RateLimit-Policy` / `RateLimit` fields, and audited as refused. A request
    /// within budget reaches the inner service, and its response gets the same two fields
    /// (appended to any the service set), so clients can slow down before a 429. If the
    /// limiter fails (Redis down), the request goes through without the fields and a warning
    /// is logged. See [`rate_limit`](crate::rate_limit).
    ///
    /// ```
    /// use apitoken::middleware::AuthLayer;
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let layer = AuthLayer::new(verifier)
    ///     .rate_limit(MemoryRateLimiter::new(), RateLimitPolicy::new(RateLimit::per_minute(100)));
    /// ```
    #[must_use]
    pub fn rate_limit(mut self, limiter: impl RateLimiter, policy: RateLimitPolicy) -> Self {
        self.rate_limit = Some(Arc::new(RateLimitStep {
            limiter: Arc::new(limiter),
            policy,
            last_warned: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
        }));
        self.with_policies()
    }

    /// Turns away client addresses that failed to authenticate too often, with 429, before
    /// their requests are parsed, hashed or looked up. Addresses are the ones the layer
    /// settles on with its [`trusted_proxies`](Self::trusted_proxies); see
    /// [`FailureThrottle`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::middleware::AuthLayer;
    /// use apitoken::rate_limit::FailureThrottle;
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let layer = AuthLayer::new(verifier)
    ///     .throttle_failures(FailureThrottle::new(20, Duration::from_secs(60)));
    /// ```
    #[must_use]
    pub fn throttle_failures(mut self, throttle: FailureThrottle) -> Self {
        self.throttle = Some(Arc::new(throttle));
        self.with_policies()
    }

    /// Adds a [`Policy`] for this layer's requests only, after the verifier's own policies
    /// and the layer's throttle and rate limit (see [`policy`](crate::policy)).
    ///
    /// ```
    /// use apitoken::middleware::AuthLayer;
    /// use apitoken::policy::{Outcome, Policy};
    /// use apitoken::{MemoryStore, Verifier};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// /// Counts refused requests, for a metric.
    /// #[derive(Default)]
    /// struct Refusals(AtomicU64);
    ///
    /// impl Policy for Refusals {
    ///     fn observe(&self, outcome: &Outcome<'_>) {
    ///         if !outcome.is_accepted() {
    ///             self.0.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     }
    /// }
    ///
    /// let layer = AuthLayer::new(Verifier::builder(MemoryStore::new()).build())
    ///     .policy(Refusals::default());
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.added.push(Arc::new(policy));
        self.with_policies()
    }

    /// The throttle first (a flooding address is turned away before any other policy runs),
    /// then the rate limit, then the added policies.
    fn with_policies(mut self) -> Self {
        let throttle = self
            .throttle
            .iter()
            .map(|t| Arc::clone(t) as Arc<dyn Policy>);
        let rate_limit = self
            .rate_limit
            .iter()
            .map(|r| Arc::clone(r) as Arc<dyn Policy>);
        self.policies = throttle
            .chain(rate_limit)
            .chain(self.added.iter().cloned())
            .collect();
        self
    }

    /// Answers refused requests with `responder`.
    pub fn responder<R2>(self, responder: R2) -> AuthLayer<S, R2> {
        AuthLayer {
            verifier: self.verifier,
            credentials: self.credentials,
            required: self.required,
            responder,
            allow_anonymous: self.allow_anonymous,
            proxies: self.proxies,
            rate_limit: self.rate_limit,
            throttle: self.throttle,
            added: self.added,
            policies: self.policies,
        }
    }
}

impl<S, R: Clone> Clone for AuthLayer<S, R> {
    fn clone(&self) -> Self {
        Self {
            verifier: self.verifier.clone(),
            credentials: Arc::clone(&self.credentials),
            required: Arc::clone(&self.required),
            responder: self.responder.clone(),
            allow_anonymous: self.allow_anonymous,
            proxies: Arc::clone(&self.proxies),
            rate_limit: self.rate_limit.clone(),
            throttle: self.throttle.clone(),
            added: self.added.clone(),
            policies: self.policies.clone(),
        }
    }
}

impl<S, R> fmt::Debug for AuthLayer<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("verifier", &self.verifier)
            .field("credentials", &self.credentials)
            .field("required", &self.required)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("trusted_proxies", &self.proxies)
            .field("rate_limit", &self.rate_limit)
            .field("throttle", &self.throttle)
            .field("policies", &self.added.len())
            .finish_non_exhaustive()
    }
}

impl<I, S, R: Clone> Layer<I> for AuthLayer<S, R> {
    type Service = Auth<I, S, R>;

    fn layer(&self, inner: I) -> Self::Service {
        Auth {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}
