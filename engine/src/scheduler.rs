//! The engine on its own thread, serving many callers through one continuous [`Batch`].
//!
//! Callers [`Scheduler::submit`] a request with a [`Sink`]; it waits in a bounded queue until
//! the batch has room, then joins it between two steps. Admission is decided at submission, so
//! an overloaded server can answer "try later" at once instead of letting latency grow.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::batch::{Batch, BatchOptions, Event, Sink};
use crate::{Engine, Error, GenerateRequest, PrefixCacheStats};

/// Limits of a [`Scheduler`].
#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// Requests generated together at most.
    pub max_running: usize,
    /// Requests waiting for a place at most; more are rejected.
    pub max_waiting: usize,
    /// How each step is spent.
    pub batch: BatchOptions,
}

/// Why a request was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Every running place and every queue place is taken.
    #[error("server is at capacity: {running} requests running and {waiting} waiting")]
    Overloaded {
        /// Requests running.
        running: usize,
        /// Requests waiting.
        waiting: usize,
    },
    /// The scheduler is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// A snapshot of the scheduler's gauges and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Requests waiting for a place.
    pub waiting_requests: usize,
    /// Requests in the batch.
    pub running_requests: usize,
    /// Samples being decoded.
    pub running_sequences: usize,
    /// Prompt tokens run through the model so far.
    pub prefilled_tokens: u64,
    /// Tokens generated so far.
    pub generated_tokens: u64,
    /// Forward passes so far.
    pub steps: u64,
    /// The prefix cache's counters.
    pub prefix_cache: PrefixCacheStats,
}

type Submission = (GenerateRequest, Box<dyn Sink + Send>);

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Submission>,
    closed: bool,
    cancel_all: bool,
}

#[derive(Default)]
struct Counters {
    running_requests: AtomicUsize,
    running_sequences: AtomicUsize,
    prefilled_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    steps: AtomicU64,
    prefix_cache: Mutex<PrefixCacheStats>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    counters: Counters,
    options: SchedulerOptions,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue itself consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs an [`Engine`] on a dedicated thread with continuous batching.
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Moves `engine` onto a new thread and starts serving.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(engine: Engine, options: SchedulerOptions) -> std::io::Result<Self> {
        let options = SchedulerOptions {
            max_running: options.max_running.max(1),
            ..options
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            counters: Counters::default(),
            options,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hexacoder-engine".into())
            .spawn(move || run(engine, &thread_shared))?;
        Ok(Scheduler {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `request`; its events go to `sink`, ending with exactly one `Finished`.
    ///
    /// # Errors
    /// The queue is full or the scheduler is shutting down; the sink is dropped unused.
    pub fn submit(
        &self,
        request: GenerateRequest,
        sink: Box<dyn Sink + Send>,
    ) -> Result<(), Rejected> {
        self.enqueue(request, sink, true)
    }

    /// Queues the continuation of work the scheduler already admitted (step 2 of a two-step
    /// request, after its step 1): it is refused only while shutting down, never for
    /// capacity, so that admitted work is not thrown away half done. It may take the queue
    /// past `max_waiting` by as many prompts as such requests continue with.
    ///
    /// # Errors
    /// The scheduler is shutting down; the sink is dropped unused.
    pub fn submit_admitted(
        &self,
        request: GenerateRequest,
        sink: Box<dyn Sink + Send>,
    ) -> Result<(), Rejected> {
        self.enqueue(request, sink, false)
    }

    fn enqueue(
        &self,
        request: GenerateRequest,
        sink: Box<dyn Sink + Send>,
        check_capacity: bool,
    ) -> Result<(), Rejected> {
        let mut queue = self.shared.queue();
        if queue.closed {
            return Err(Rejected::ShuttingDown);
        }
        let options = &self.shared.options;
        let running = self
            .shared
            .counters
            .running_requests
            .load(Ordering::Relaxed);
        let waiting = queue.waiting.len();
        if check_capacity && running + waiting >= options.max_running + options.max_waiting {
            return Err(Rejected::Overloaded { running, waiting });
        }
        queue.waiting.push_back((request, sink));
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Gauges and counters now.
    pub fn stats(&self) -> SchedulerStats {
        let counters = &self.shared.counters;
        SchedulerStats {
            waiting_requests: self.shared.queue().waiting.len(),
            running_requests: counters.running_requests.load(Ordering::Relaxed),
            running_sequences: counters.running_sequences.load(Ordering::Relaxed),
            prefilled_tokens: counters.prefilled_tokens.load(Ordering::Relaxed),
            generated_tokens: counters.generated_tokens.load(Ordering::Relaxed),
            steps: counters.steps.load(Ordering::Relaxed),
            prefix_cache: *counters
                .prefix_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The limits it runs under.
    pub fn options(&self) -> SchedulerOptions {
        self.shared.options
    }

    /// Stops accepting requests; those already accepted run to completion.
    pub fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_all();
    }

    /// Stops accepting requests and cancels every accepted one.
    pub fn cancel_all(&self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        queue.cancel_all = true;
        drop(queue);
        self.shared.wake.notify_all();
    }

    /// Closes the scheduler and waits for its thread to finish the accepted requests.
    pub fn join(&self) {
        self.close();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("engine thread panicked");
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.cancel_all();
        self.join();
    }
}

fn run(mut engine: Engine, shared: &Shared) {
    let options = shared.options;
    let mut batch: Batch<'static> = Batch::new(options.batch);
    loop {
        let mut admitted = Vec::new();
        {
            let mut queue = shared.queue();
            if queue.cancel_all {
                for (_, mut sink) in queue.waiting.drain(..) {
                    sink.send(Event::Finished(Err(Error::Cancelled)));
                }
            }
            while batch.len() + admitted.len() < options.max_running
                && let Some(submission) = queue.waiting.pop_front()
            {
                admitted.push(submission);
            }
            // Counted as running from here, so `submit` never admits past the limits.
            shared
                .counters
                .running_requests
                .store(batch.len() + admitted.len(), Ordering::Relaxed);
            if batch.is_empty() && admitted.is_empty() {
                if queue.closed {
                    break;
                }
                let _queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
        }
        let cancel_all = shared.queue().cancel_all;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            for (request, sink) in admitted {
                batch.add(&mut engine, request, sink);
            }
            if cancel_all {
                return Ok(batch.cancel_all(&mut engine));
            }
            batch.step(&mut engine)
        }));
        let counters = &shared.counters;
        match outcome {
            Ok(Ok(report)) => {
                counters
                    .prefilled_tokens
                    .fetch_add(report.prefilled_tokens as u64, Ordering::Relaxed);
                counters
                    .generated_tokens
                    .fetch_add(report.generated_tokens as u64, Ordering::Relaxed);
            }
            Ok(Err(err)) => {
                tracing::error!(%err, "engine step failed; ending the batch's requests");
                let message = err.to_string();
                batch.fail_all(|| Error::Internal(message.clone()));
            }
            Err(_) => {
                tracing::error!("engine step panicked; ending the batch's requests");
                batch.fail_all(|| Error::Internal("the engine panicked".into()));
            }
        }
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters
            .running_requests
            .store(batch.len(), Ordering::Relaxed);
        counters
            .running_sequences
            .store(batch.decoding_sequences(), Ordering::Relaxed);
        *counters
            .prefix_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = engine.prefix_cache_stats();
    }
    counters_reset(&shared.counters);
}

fn counters_reset(counters: &Counters) {
    counters.running_requests.store(0, Ordering::Relaxed);
    counters.running_sequences.store(0, Ordering::Relaxed);
}
