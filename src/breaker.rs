//! [`BreakerLayer`]: fail fast while the upstream cannot be reached.
//!
//! What it does to a request: after `failures` requests in a row could not connect to the
//! upstream (`connect` or `tls`: nothing was sent), the circuit opens, and for `cooldown`
//! every request is answered 503 (`circuit_open`, with `Retry-After`) at once, without
//! dialling: the app sees the outage in microseconds instead of a connect timeout per call.
//! When the cooldown ends, one request at a time goes through as a probe; the first that
//! reaches the upstream closes the circuit, a failed one opens it for another cooldown.
//!
//! What it does to a response: reads the [`ErrorKind`] extension the forwarder sets, to count
//! connect failures; any answer from the upstream, whatever its status, resets the count.
//! Off unless `circuit_breaker_failures` is set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::{AnswerBody, ErrorKind};

/// When the circuit opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Connect failures in a row that open the circuit; 0 turns the breaker off.
    pub failures: u32,
    /// How long the circuit stays open before a probe may go through.
    pub cooldown: Duration,
}

/// Layer that applies [`Breaker`]; its clones share one circuit.
#[derive(Clone)]
pub struct BreakerLayer {
    circuit: Option<Arc<Circuit>>,
}

impl BreakerLayer {
    /// A breaker as `config` says (a pass-through when `failures` is 0).
    pub fn new(config: BreakerConfig) -> Self {
        BreakerLayer {
            circuit: (config.failures > 0).then(|| {
                Arc::new(Circuit {
                    config,
                    epoch: Instant::now(),
                    failures: AtomicU32::new(0),
                    open_until: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                })
            }),
        }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            circuit: self.circuit.clone(),
        }
    }
}

/// The shared state: lock-free, since every request reads it.
struct Circuit {
    config: BreakerConfig,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds after `epoch` until which the circuit is open.
    open_until: AtomicU64,
    /// Whether a probe is in flight (half-open).
    probing: AtomicBool,
}

impl Circuit {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request may go upstream, and whether it goes as the probe.
    fn admit(&self) -> Option<bool> {
        if self.failures.load(Ordering::Acquire) < self.config.failures {
            return Some(false);
        }
        if self.now() < self.open_until.load(Ordering::Acquire) {
            return None;
        }
        // Cooldown over: one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(true)
    }

    fn record(&self, connect_failed: bool) {
        if connect_failed {
            let failures = self
                .failures
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1);
            if failures >= self.config.failures {
                let cooldown = u64::try_from(self.config.cooldown.as_millis()).unwrap_or(u64::MAX);
                self.open_until
                    .store(self.now().saturating_add(cooldown), Ordering::Release);
                if failures == self.config.failures {
                    tracing::warn!(failures, cooldown = ?self.config.cooldown, "upstream unreachable: circuit open, failing fast");
                }
            }
        } else if self.failures.swap(0, Ordering::AcqRel) >= self.config.failures {
            tracing::info!("upstream reachable again: circuit closed");
        }
    }
}

/// Service that fails fast while the circuit is open; see the [module docs](self).
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    circuit: Option<Arc<Circuit>>,
}

impl<S, B, ResBody> Service<Request<B>> for Breaker<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: AnswerBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BreakerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(circuit) = &self.circuit else {
            return BreakerFuture {
                state: State::Forward {
                    inner: self.inner.call(request),
                    watch: None,
                },
            };
        };
        let state = match circuit.admit() {
            Some(probe) => State::Forward {
                inner: self.inner.call(request),
                watch: Some(Watch {
                    circuit: Arc::clone(circuit),
                    probe,
                }),
            },
            None => State::Open {
                retry_after: Some(circuit.config.cooldown.as_secs().max(1)),
            },
        };
        BreakerFuture { state }
    }
}

/// Reports the outcome of one admitted request to the circuit; a probe that never finishes
/// (its client went away) frees the probe slot when dropped.
struct Watch {
    circuit: Arc<Circuit>,
    probe: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.probe {
            self.circuit.probing.store(false, Ordering::Release);
        }
    }
}

pin_project! {
    /// Response future of [`Breaker`].
    pub struct BreakerFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Forwarded; watched when the breaker is on.
        Forward { #[pin] inner: F, watch: Option<Watch> },
        // Answered by the open circuit, with `Retry-After` in seconds. The answer is made when
        // polled: inline, it would make every request's future larger (see `Forward`).
        Open { retry_after: Option<u64> },
    }
}

impl<F, ResBody, E> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: AnswerBody,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forward { inner, watch } => {
                let response = ready!(inner.poll(cx))?;
                if let Some(watch) = watch.take() {
                    let kind = response.extensions().get::<ErrorKind>();
                    watch
                        .circuit
                        .record(matches!(kind, Some(ErrorKind::Connect | ErrorKind::Tls)));
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Open { retry_after } => {
                let retry_after = retry_after.take().expect("polled after completion");
                let mut response = ErrorKind::CircuitOpen.response();
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
                Poll::Ready(Ok(response.map(ResBody::answer)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(failures: u32, cooldown: Duration) -> Arc<Circuit> {
        BreakerLayer::new(BreakerConfig { failures, cooldown })
            .circuit
            .expect("on")
    }

    #[test]
    fn opens_after_the_failures_and_probes_one_at_a_time_after_the_cooldown() {
        let circuit = circuit(3, Duration::from_millis(50));
        for _ in 0..3 {
            assert_eq!(circuit.admit(), Some(false));
            circuit.record(true);
        }
        assert_eq!(circuit.admit(), None, "open");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(circuit.admit(), Some(true), "the probe");
        assert_eq!(circuit.admit(), None, "one probe at a time");
        // The probe fails: open again, for another cooldown.
        circuit.record(true);
        circuit.probing.store(false, Ordering::Release);
        assert_eq!(circuit.admit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(circuit.admit(), Some(true));
        circuit.record(false);
        circuit.probing.store(false, Ordering::Release);
        assert_eq!(circuit.admit(), Some(false), "closed");
    }

    #[test]
    fn any_upstream_answer_resets_the_count() {
        let circuit = circuit(2, Duration::from_secs(60));
        circuit.record(true);
        circuit.record(false);
        circuit.record(true);
        assert_eq!(circuit.admit(), Some(false));
    }

    #[test]
    fn off_is_a_pass_through() {
        let layer = BreakerLayer::new(BreakerConfig {
            failures: 0,
            cooldown: Duration::from_secs(5),
        });
        assert!(layer.circuit.is_none());
    }
}
