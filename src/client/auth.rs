//! [`AddApiKeyLayer`] and [`AddApiKey`]: put the key on every outgoing request.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::header::Entry;
use tower_layer::Layer;
use tower_service::Service;

use super::key::ApiKey;

/// Adds an [`ApiKey`] to every request; see the [module documentation](super).
///
/// A request that already carries the key's header (`Authorization`, or the custom header)
/// keeps its own value: the caller chose that credential for that request, and sending two
/// would be refused (RFC 9110 §5.3: `Authorization` is not a list). Its value is marked
/// sensitive too. Cheap to clone.
///
/// ```
/// use apitoken::client::{AddApiKeyLayer, ApiKey};
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let service = ServiceBuilder::new()
///     .layer(AddApiKeyLayer::new(ApiKey::new("dbaudit_live_xxxxxxxx")?))
///     .service(service_fn(|request: Request<String>| async move {
///         let value = &request.headers()["authorization"];
///         assert!(value.is_sensitive());
///         Ok::<_, std::convert::Infallible>(Response::new(value.to_str().unwrap().to_owned()))
///     }));
///
/// let response = service.oneshot(Request::new(String::new())).await?;
/// assert_eq!(response.body(), "Bearer dbaudit_live_xxxxxxxx");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct AddApiKeyLayer {
    key: Arc<ApiKey>,
}

impl AddApiKeyLayer {
    /// Sends `key` with every request.
    pub fn new(key: ApiKey) -> Self {
        Self { key: Arc::new(key) }
    }

    /// The key this layer sends.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }
}

impl fmt::Debug for AddApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddApiKeyLayer")
            .field("key", &self.key)
            .finish()
    }
}

impl<S> Layer<S> for AddApiKeyLayer {
    type Service = AddApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddApiKey {
            inner,
            key: Arc::clone(&self.key),
        }
    }
}

/// The service made by [`AddApiKeyLayer`]: adds the key, then calls the inner service.
#[derive(Clone)]
pub struct AddApiKey<S> {
    inner: S,
    key: Arc<ApiKey>,
}

impl<S> AddApiKey<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for AddApiKey<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddApiKey")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for AddApiKey<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match request.headers_mut().entry(self.key.header_name()) {
            Entry::Occupied(mut entry) => entry.iter_mut().for_each(|v| v.set_sensitive(true)),
            Entry::Vacant(entry) => {
                entry.insert(self.key.header_value().clone());
            }
        }
        self.inner.call(request)
    }
}
