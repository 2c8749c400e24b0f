//! Where the frame reader leaves what a call or a service waits for: a
//! queue that a thread can block on and a task can await. It replaces a
//! channel only so that async waiters are woken too: the reader (the
//! connection's thread, or a waiting thread holding the reader) posts, and
//! the one receiver takes. Dropping every poster ends it, as when the
//! connection closes.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    posters: usize,
    receiver: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    /// The state, even after a panic elsewhere: a queue and counters, valid
    /// at every step.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the receiver, blocked or awaiting.
    fn wake(&self, mut st: MutexGuard<'_, State<T>>) {
        let waker = st.waker.take();
        drop(st);
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The posting end; cloned for each place that may post.
pub(crate) struct Post<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end.
pub(crate) struct Mailbox<T> {
    shared: Arc<Shared<T>>,
}

/// A new, empty mailbox.
pub(crate) fn mailbox<T>() -> (Post<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            posters: 1,
            receiver: true,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Post {
            shared: shared.clone(),
        },
        Mailbox { shared },
    )
}

impl<T> Post<T> {
    /// Posts `v`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, v: T) -> Result<(), T> {
        let mut st = self.shared.lock();
        if !st.receiver {
            return Err(v);
        }
        st.queue.push_back(v);
        self.shared.wake(st);
        Ok(())
    }
}

impl<T> Clone for Post<T> {
    fn clone(&self) -> Self {
        self.shared.lock().posters += 1;
        Post {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Post<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.posters -= 1;
        if st.posters == 0 {
            self.shared.wake(st);
        }
    }
}

impl<T> Mailbox<T> {
    /// The next post, if one is there; disconnected once every poster is
    /// gone and the queue is empty.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.shared.lock();
        match st.queue.pop_front() {
            Some(v) => Ok(v),
            None if st.posters == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits for the next post.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        let mut st = self.shared.lock();
        loop {
            if let Some(v) = st.queue.pop_front() {
                return Ok(v);
            }
            if st.posters == 0 {
                return Err(RecvError);
            }
            st = self
                .shared
                .ready
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next post for a task: `Ready(None)` once every poster is gone.
    /// The task is woken by the next post (only the latest task polling is
    /// remembered: one receiver, one waiter).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.shared.lock();
        if let Some(v) = st.queue.pop_front() {
            return Poll::Ready(Some(v));
        }
        if st.posters == 0 {
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver = false;
        // What was posted and never taken goes now (descriptors close).
        st.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn posts_arrive_in_order_and_the_end_follows_the_last_poster() {
        let (post, rx) = mailbox();
        let other = post.clone();
        post.send(1).unwrap();
        other.send(2).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(post);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "one poster left");
        drop(other);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv(), Err(RecvError));
    }

    #[test]
    fn a_blocked_receiver_and_an_awaiting_task_are_both_woken() {
        let (post, rx) = mailbox::<u32>();
        let t = std::thread::spawn(move || rx.recv());
        std::thread::sleep(std::time::Duration::from_millis(20));
        post.send(7).unwrap();
        assert_eq!(t.join().unwrap(), Ok(7));

        let (post, rx) = mailbox::<u32>();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        post.send(9).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(9)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        drop(post);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "the end wakes too");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn posting_to_a_dropped_mailbox_gives_the_value_back() {
        let (post, rx) = mailbox();
        post.send(String::from("kept")).unwrap();
        drop(rx);
        assert_eq!(post.send(String::from("back")), Err(String::from("back")));
    }
}
