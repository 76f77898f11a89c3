//! [`ResponseDeadline`]: the response-head timeout of one forwarded request, with a timer only
//! when one is needed.
//!
//! A tokio timer costs a registration in the timer wheel when the request first waits and a
//! removal when it ends (callgrind: about 600 instructions per request, most of it for requests
//! that are answered in a millisecond). An HTTP/1 request does not need one while its deadline
//! is far: it is polled by its connection's task, and the connection guard (see
//! `server::ConnectionGuard`) wakes that task at least once per header-read timeout while a
//! request is in flight. Each such wake looks at the clock; once the deadline is nearer than
//! the next wake, a timer is armed for what is left, so the request still times out on time.
//! An HTTP/2 request runs in a task of its own, which nothing else wakes: it arms the timer at
//! once.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// When a forwarded request's response head is due; see the [module docs](self).
pub(super) struct ResponseDeadline {
    at: Instant,
    /// How often at most something else wakes the task polling this (its connection's guard),
    /// when something does.
    woken_every: Option<Duration>,
    /// Boxed, and made only when needed: inline, it would make the future every layer moves
    /// larger by the size of a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl ResponseDeadline {
    /// A deadline `timeout` from now, for a task that something else wakes at least every
    /// `woken_every` (if anything does).
    pub(super) fn after(timeout: Duration, woken_every: Option<Duration>) -> Self {
        ResponseDeadline {
            at: Instant::now() + timeout,
            woken_every,
            timer: None,
        }
    }

    /// Ready once the deadline has passed. Until then the task is woken by the timer, or by
    /// whatever wakes it at least every `woken_every` while the deadline is further away.
    pub(super) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_passed_at(Instant::now, cx)
    }

    /// [`Self::poll_passed`] with the clock `now`, read only when no timer is armed yet.
    fn poll_passed_at(&mut self, now: impl FnOnce() -> Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(timer) = &mut self.timer {
            return timer.as_mut().poll(cx);
        }
        let now = now();
        if now >= self.at {
            return Poll::Ready(());
        }
        match self.woken_every {
            Some(period) if self.at - now > period => Poll::Pending,
            _ => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(self.at)))
                .as_mut()
                .poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn at(deadline: &mut ResponseDeadline, now: Instant) -> Poll<()> {
        deadline.poll_passed_at(|| now, &mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Due 30 s after `start`, for a task woken at least every 10 s.
    fn due_in_30_s_woken_every_10_s(start: Instant) -> ResponseDeadline {
        ResponseDeadline {
            at: start + 30 * SECOND,
            woken_every: Some(10 * SECOND),
            timer: None,
        }
    }

    #[tokio::test]
    async fn a_far_deadline_waits_for_the_outside_wake_then_arms_a_timer() {
        let start = Instant::now();
        let mut deadline = due_in_30_s_woken_every_10_s(start);
        assert!(at(&mut deadline, start).is_pending());
        assert!(
            deadline.timer.is_none(),
            "30 s away, woken every 10 s: no timer"
        );
        assert!(at(&mut deadline, start + 19 * SECOND).is_pending());
        assert!(deadline.timer.is_none(), "11 s left");
        assert!(at(&mut deadline, start + 21 * SECOND).is_pending());
        assert!(deadline.timer.is_some(), "9 s left: the timer takes over");
    }

    #[tokio::test]
    async fn a_passed_deadline_is_ready_without_a_timer() {
        let start = Instant::now();
        let mut deadline = due_in_30_s_woken_every_10_s(start);
        assert!(at(&mut deadline, start + 31 * SECOND).is_ready());
        assert!(deadline.timer.is_none());
    }

    #[tokio::test]
    async fn without_an_outside_wake_the_timer_is_armed_at_once_and_fires() {
        let mut deadline = ResponseDeadline::after(30 * SECOND, None);
        assert!(
            deadline
                .poll_passed(&mut Context::from_waker(std::task::Waker::noop()))
                .is_pending()
        );
        assert!(deadline.timer.is_some());
        let mut near = ResponseDeadline::after(Duration::from_millis(50), Some(10 * SECOND));
        tokio::time::timeout(5 * SECOND, std::future::poll_fn(|cx| near.poll_passed(cx)))
            .await
            .expect("the timer fires: due before the next outside wake");
    }
}
