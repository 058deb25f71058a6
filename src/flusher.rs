//! [`LastUsedFlusher`]: the background task (feature `tokio`) that writes buffered last-use
//! times in batches. A plug-in on the core's last-use tracking (`last_used`), so the core has no
//! runtime dependency.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{StoreError, TokenStore};
use crate::verifier::{Verifier, WeakVerifier};

type FinalFlush = Box<
    dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<usize, StoreError>> + Send>> + Send + Sync,
>;

/// The background task that flushes a verifier's last-use times every interval. Made by
/// [`Verifier::spawn_last_used_flusher`].
///
/// Call [`shutdown`](Self::shutdown) when the service stops: it stops the task and flushes
/// what remains. Dropping the handle (`let _ = verifier.spawn_last_used_flusher();`) leaves
/// the task running, flushing every interval, until every clone of the verifier (and every
/// [`Issuer`](crate::Issuer) made from one, which holds it too) is dropped;
/// only the final flush is lost, since a flush cannot be awaited in `Drop`. Whatever the
/// last tick did not write stays in the verifier's buffer, and a verifier dropped with
/// unflushed times logs a warning with their count.
///
/// ```
/// use apitoken::{MemoryStore, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let flusher = verifier.spawn_last_used_flusher();
/// // … serve requests …
/// let written = flusher.shutdown().await?;
/// assert_eq!(written, 0);
/// # Ok::<(), apitoken::StoreError>(())
/// # }).unwrap();
/// ```
#[must_use = "keep the handle and call `shutdown` when the service stops: dropping it keeps \
              the task running but loses the final flush"]
pub struct LastUsedFlusher {
    interval: Option<Duration>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    final_flush: Option<FinalFlush>,
}

impl LastUsedFlusher {
    /// Stops the task (after the flush it may be running, which is not interrupted) and
    /// flushes what remains, returning the result of that final flush: how many tokens it
    /// wrote, or the store's error (the times then stay in the verifier's buffer).
    ///
    /// If the final write hangs, so does this; wrap it in a timeout if the store may.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let flusher = verifier.spawn_last_used_flusher();
    /// let issued = verifier.issuer().issue(NewToken::new("CI", Owner::new("team-1")?)).await?;
    /// verifier.authenticate(issued.token.expose_secret()).await?;
    /// assert_eq!(flusher.shutdown().await?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown(mut self) -> Result<usize, StoreError> {
        if let Some(stop) = self.stop.take() {
            // The task may have ended already; then there is nobody to tell.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
        match self.final_flush.take() {
            Some(flush) => flush().await,
            None => Ok(0),
        }
    }

    /// How often the task flushes; `None` if the verifier does not track last use (then
    /// no task runs).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new())
    ///     .last_used_flush_interval(Duration::from_secs(10))
    ///     .build();
    /// let flusher = verifier.spawn_last_used_flusher();
    /// assert_eq!(flusher.interval(), Some(Duration::from_secs(10)));
    /// # flusher.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }
}

impl fmt::Debug for LastUsedFlusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedFlusher")
            .field("interval", &self.interval)
            .field("running", &self.task.as_ref().map(|t| !t.is_finished()))
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore + 'static> Verifier<S> {
    /// Spawns a tokio task that calls [`flush_last_used`](Self::flush_last_used) every
    /// [flush interval](crate::VerifierBuilder::last_used_flush_interval), first one
    /// interval from now. A failed flush is logged with `tracing::warn!` (the store's
    /// error; no token, no secret) and its times are retried on the next tick; a store that
    /// panics fails that flush only (logged with `tracing::error!`, times kept), not the
    /// task. A flush that takes longer than the interval delays the next one instead of
    /// queueing more.
    ///
    /// Spawn one per verifier (clones share the buffer, so one is enough); keep the handle
    /// and call [`LastUsedFlusher::shutdown`] when the service stops (on SIGTERM as well as
    /// Ctrl-C: `docker stop`, Kubernetes and systemd send SIGTERM). The task holds the
    /// verifier weakly: it ends by itself once every clone of the verifier and every issuer
    /// made from one is dropped. A flush still writing then (a custom store that hangs, with
    /// no deadline of its own) is abandoned at the next tick, so the store is freed. A
    /// verifier built with
    /// [`disable_last_used`](crate::VerifierBuilder::disable_last_used) spawns nothing.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`] does.
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let verifier = Verifier::builder(MemoryStore::new()).build();
    ///     let flusher = verifier.spawn_last_used_flusher();
    ///     // Serve until told to stop, e.g. axum::serve(…).with_graceful_shutdown(…).await?
    ///     flusher.shutdown().await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn spawn_last_used_flusher(&self) -> LastUsedFlusher {
        let Some(every) = self.last_used_flush_interval() else {
            return LastUsedFlusher {
                interval: None,
                stop: None,
                task: None,
                final_flush: None,
            };
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(self.downgrade(), every, stopped));
        let verifier = self.clone();
        LastUsedFlusher {
            interval: Some(every),
            stop: Some(stop),
            task: Some(task),
            final_flush: Some(Box::new(move || {
                Box::pin(async move { verifier.flush_last_used().await })
            })),
        }
    }
}

/// Flushes every `every` until told to stop, or, once the handle is dropped without
/// `shutdown`, until the verifier is gone.
async fn run<S: TokenStore + 'static>(
    verifier: WeakVerifier<S>,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut next = Instant::now() + every;
    let mut detached = false;
    loop {
        if detached {
            tokio::time::sleep_until(next).await;
        } else {
            match tokio::time::timeout_at(next, &mut stopped).await {
                Ok(Ok(())) => return,
                // The handle was dropped: keep flushing, only no one will call `shutdown`.
                Ok(Err(_)) => {
                    detached = true;
                    tokio::time::sleep_until(next).await;
                }
                Err(_) => {}
            }
        }
        // Held only for the flush, so a dropped verifier is freed between ticks.
        let Some(strong) = verifier.upgrade() else {
            return;
        };
        // Its own task: a store that panics fails this flush, not the flusher. The times of
        // a failed or panicked flush go back into the buffer for the next one.
        let mut flush = tokio::spawn(async move {
            if let Err(err) = strong.flush_last_used().await {
                tracing::warn!(
                    error = ?err,
                    pending = strong.last_used_pending(),
                    "could not flush last-use times; they are kept for the next flush"
                );
            }
        });
        loop {
            match tokio::time::timeout(every, &mut flush).await {
                Ok(Ok(())) => break,
                Ok(Err(err)) => {
                    if err.is_panic() {
                        tracing::error!(
                            "a last-use flush panicked; its times are kept for the next flush"
                        );
                    }
                    break;
                }
                // Still writing. If the flush is the verifier's only holder, nothing will use
                // the verifier again: the write (a store without a deadline that hangs) is
                // abandoned, so the verifier and its store are freed.
                Err(_) if verifier.holders() <= 1 => {
                    flush.abort();
                    return;
                }
                Err(_) => {}
            }
        }
        next += every;
        let now = Instant::now();
        if next <= now {
            next = now + every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LastUsedFlusher;

    #[test]
    fn the_flusher_handle_can_live_in_shared_state() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<LastUsedFlusher>();
    }
}
