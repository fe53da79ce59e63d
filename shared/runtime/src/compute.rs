//! The compute pool: a fixed set of threads, one per core, for the parts of
//! handlers that compute or block (reading and parsing a queue file,
//! matching rules, flushing a store). Async workers stay free for requests
//! that only wait, and the reader is never held up by a handler.
//!
//! Jobs wait in one queue, at most one per admitted request, so the
//! in-flight bound is also the queue's bound. A thread that finishes a job
//! takes the next one without sleeping, and a job is handed to a sleeping
//! thread only when one sleeps: under load a job costs no wake-up on the
//! pool side. tokio's `spawn_blocking` behind a semaphore was measured at
//! 29,000 jobs/s on the 2-core machine, with four cross-thread wake-ups per
//! job (semaphore, blocking thread, join handle, writer).

use crate::sync;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, OnceLock};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static ON_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is one of the pool's: a request woken here by its
/// finished work may run on here instead of waking an async worker.
pub(crate) fn on_pool_thread() -> bool {
    ON_POOL.with(std::cell::Cell::get)
}

struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting on `ready`: a job wakes one only when there is one.
    sleeping: usize,
}

impl Pool {
    fn start() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            // Jobs may use tokio's clock or spawn; the pool lives as long
            // as the process, so the runtime it was started from does too.
            let runtime = tokio::runtime::Handle::try_current().ok();
            for _ in 0..threads {
                let runtime = runtime.clone();
                std::thread::Builder::new()
                    .name("compute".into())
                    .spawn(move || {
                        let _entered = runtime.as_ref().map(|r| r.enter());
                        ON_POOL.with(|on| on.set(true));
                        Pool::start().work();
                    })
                    .expect("spawning a compute thread");
            }
            Pool {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
            }
        })
    }

    fn work(&self) {
        let mut queue = sync::lock(&self.queue);
        loop {
            match queue.jobs.pop_front() {
                Some(job) => {
                    drop(queue);
                    job();
                    queue = sync::lock(&self.queue);
                }
                None => {
                    queue.sleeping += 1;
                    queue = self.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                    queue.sleeping -= 1;
                }
            }
        }
    }

    fn submit(&self, job: Job) {
        let mut queue = sync::lock(&self.queue);
        queue.jobs.push_back(job);
        let wake = queue.sleeping > 0;
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// Runs `work` on the compute pool and waits for its result. A panic in
/// `work` is passed on to the handler, so the runtime answers it with the
/// helper's panic reply like any other. Dropping the future (the deadline
/// passed) does not stop work already started; its result is dropped.
pub async fn compute<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    Pool::start().submit(Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    }));
    match rx.await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The job always sends; a pool thread that died with it is the
        // only way here, and then the deadline answers.
        Err(_) => std::future::pending().await,
    }
}
