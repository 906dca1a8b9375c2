//! Continuous batching through the threaded scheduler: requests that run together give what
//! they give alone, admission is bounded, and a listener that leaves cancels its request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use hexacoder_engine::batch::{BatchOptions, Event, Sink};
use hexacoder_engine::{
    FinishReason, GenerateRequest, Generation, Rejected, SamplingParams, Scheduler,
    SchedulerOptions, SchedulerStats,
};
use hexacoder_testkit::Arch;

use crate::support::{self, Tiny, request};

pub(crate) fn options(max_running: usize, max_waiting: usize) -> SchedulerOptions {
    SchedulerOptions {
        max_running,
        max_waiting,
        // Small chunks so that prompts prefill across several steps, mixed with decoding.
        batch: BatchOptions {
            prefill_chunk: 7,
            interleaved_prefill_chunk: 3,
        },
    }
}

/// Forwards events to a channel; `closed` simulates a client that went away.
struct ChannelSink {
    events: mpsc::Sender<Event>,
    closed: Arc<AtomicBool>,
}

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.events.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

pub(crate) fn submit(scheduler: &Scheduler, request: GenerateRequest) -> mpsc::Receiver<Event> {
    let (events, receiver) = mpsc::channel();
    let sink = ChannelSink {
        events,
        closed: Arc::new(AtomicBool::new(false)),
    };
    scheduler.submit(request, Box::new(sink)).expect("accepted");
    receiver
}

/// Waits for `Finished`, checking that streamed text adds up to each sample's text.
pub(crate) fn finish(receiver: &mpsc::Receiver<Event>, n: usize) -> Generation {
    let mut streamed = vec![String::new(); n];
    loop {
        match receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("an event within a minute")
        {
            Event::Token { sample, text, .. } => streamed[sample].push_str(&text),
            Event::Finished(result) => {
                let generation = result.expect("generation");
                for (sample, text) in generation.samples.iter().zip(&streamed) {
                    assert_eq!(&sample.text, text);
                }
                return generation;
            }
        }
    }
}

/// Stats once the engine thread has published the step that ended the last request.
fn settled(scheduler: &Scheduler) -> SchedulerStats {
    for _ in 0..500 {
        let stats = scheduler.stats();
        if stats.running_requests == 0 && stats.running_sequences == 0 {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("scheduler still busy after 5 s: {:?}", scheduler.stats());
}

#[test]
fn requests_batched_together_give_what_they_give_alone() {
    let (_dir, mut alone) = support::tiny_engine(Tiny::small(Arch::Qwen2), 5, &support::options());
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 0,
        seed: Some(3),
    };
    let requests = vec![
        request("def add(a, b):\n", 24, SamplingParams::greedy()),
        GenerateRequest {
            n: 3,
            ..request("import os\nimport sys\n\nclass Config:\n", 30, sampled)
        },
        GenerateRequest {
            suffix: Some("\n    return total\n".into()),
            ..request("def total(xs):\n", 16, SamplingParams::greedy())
        },
        request("x", 40, SamplingParams::greedy()),
    ];
    let expected: Vec<Generation> = requests
        .iter()
        .map(|r| alone.generate(r, &mut |_, _| true).expect("alone"))
        .collect();

    let (_dir2, engine) = support::tiny_engine(Tiny::small(Arch::Qwen2), 5, &support::options());
    let scheduler = Scheduler::start(engine, options(8, 8)).expect("start");
    let receivers: Vec<_> = requests
        .iter()
        .map(|r| submit(&scheduler, r.clone()))
        .collect();
    for ((receiver, request), expected) in receivers.iter().zip(&requests).zip(&expected) {
        let got = finish(receiver, request.n);
        assert_eq!(got.prompt_tokens, expected.prompt_tokens);
        for (got, expected) in got.samples.iter().zip(&expected.samples) {
            assert_eq!(got.text, expected.text, "prompt {:?}", request.prompt);
            assert_eq!(got.finish_reason, expected.finish_reason);
            let ids =
                |s: &hexacoder_engine::Sample| s.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
            assert_eq!(ids(got), ids(expected));
        }
    }
    let stats = settled(&scheduler);
    let generated: usize = expected.iter().map(|g| g.completion_tokens()).sum();
    assert_eq!(stats.generated_tokens, generated as u64);
    // Fewer steps than running the requests one after another: decoding was shared.
    let sequential_steps: u64 = expected
        .iter()
        .zip(&requests)
        .map(|(g, r)| (g.prompt_tokens.len().div_ceil(7) + g.completion_tokens() / r.n) as u64)
        .sum();
    assert!(
        stats.steps < sequential_steps,
        "{} steps, {sequential_steps} if run one by one",
        stats.steps
    );
}

/// Holds the engine thread inside `send` of the first token until released.
struct BlockingSink {
    gate: Option<Arc<Barrier>>,
    events: mpsc::Sender<Event>,
}

impl Sink for BlockingSink {
    fn send(&mut self, event: Event) -> bool {
        if let Some(gate) = self.gate.take() {
            gate.wait();
            gate.wait();
        }
        self.events.send(event).is_ok()
    }
}

#[test]
fn admission_is_bounded_and_a_closed_listener_cancels_its_request() {
    let (_dir, engine) = support::tiny_engine(Tiny::small(Arch::Llama), 5, &support::options());
    let scheduler = Scheduler::start(engine, options(1, 1)).expect("start");
    let gate = Arc::new(Barrier::new(2));
    let (events, first) = mpsc::channel();
    let long = GenerateRequest {
        ignore_eos: true,
        ..request("a", 200, SamplingParams::greedy())
    };
    scheduler
        .submit(
            long.clone(),
            Box::new(BlockingSink {
                gate: Some(Arc::clone(&gate)),
                events,
            }),
        )
        .expect("first accepted");
    gate.wait(); // The engine is now inside the first request's first token.
    let second = submit(&scheduler, long.clone());
    match scheduler.submit(
        long.clone(),
        Box::new(BlockingSink {
            gate: None,
            events: mpsc::channel().0,
        }),
    ) {
        Err(Rejected::Overloaded {
            running: 1,
            waiting: 1,
        }) => {}
        other => panic!("expected overload, got {other:?}"),
    }
    assert_eq!(scheduler.stats().waiting_requests, 1);
    // The continuation of admitted work (two-step's step 2) is queued past the limit.
    let (events, continued) = mpsc::channel();
    scheduler
        .submit_admitted(
            request("c", 3, SamplingParams::greedy()),
            Box::new(ChannelSink {
                events,
                closed: Arc::new(AtomicBool::new(false)),
            }),
        )
        .expect("a continuation is never refused for capacity");
    assert_eq!(scheduler.stats().waiting_requests, 2);
    gate.wait();
    let first = finish(&first, 1);
    assert_eq!(first.samples[0].finish_reason, FinishReason::Length);
    assert_eq!(
        first.samples[0].tokens.len(),
        200,
        "ignore_eos runs to max_tokens"
    );

    // A client that leaves: its request ends as cancelled, long before max_tokens.
    let closed = Arc::new(AtomicBool::new(false));
    let (events, third) = mpsc::channel();
    let huge = GenerateRequest {
        ignore_eos: true,
        ..request("b", 240, SamplingParams::greedy())
    };
    let _ = finish(&second, 1);
    let _ = finish(&continued, 1);
    scheduler
        .submit(
            huge,
            Box::new(ChannelSink {
                events,
                closed: Arc::clone(&closed),
            }),
        )
        .expect("accepted");
    match third
        .recv_timeout(Duration::from_secs(60))
        .expect("a token")
    {
        Event::Token { .. } => closed.store(true, Ordering::Relaxed),
        Event::Finished(r) => panic!("finished before its first token: {r:?}"),
    }
    let cancelled = finish(&third, 1);
    assert_eq!(cancelled.samples[0].finish_reason, FinishReason::Cancelled);
    assert!(cancelled.samples[0].tokens.len() < 240);
    settled(&scheduler);

    scheduler.close();
    assert_eq!(
        scheduler
            .submit(
                request("c", 1, SamplingParams::greedy()),
                Box::new(BlockingSink {
                    gate: None,
                    events: mpsc::channel().0
                })
            )
            .err(),
        Some(Rejected::ShuttingDown)
    );
}

/// A sink other test modules use: events into a channel.
pub struct ChannelSinkForTests(pub mpsc::Sender<Event>);

impl Sink for ChannelSinkForTests {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
}

/// The generation once `Finished` arrives.
pub fn wait_finished(receiver: &mpsc::Receiver<Event>) -> Generation {
    loop {
        match receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("an event within a minute")
        {
            Event::Token { .. } => {}
            Event::Finished(result) => return result.expect("generation"),
        }
    }
}
