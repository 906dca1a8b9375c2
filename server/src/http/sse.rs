//! Server-sent events: a [`Run`]'s events translated into `data: {json}` chunks, closed by
//! `data: [DONE]` for OpenAI clients. When the client goes away, axum drops the stream and
//! with it the run, which cancels the generation.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;

use super::run::{Run, RunEvent};

/// Turns a run's events into the chunks of one wire format.
pub trait Translate: Send + 'static {
    /// One `data:` payload.
    type Chunk: Serialize;
    /// Chunks for one event (often none: a token whose text is held back).
    fn event(&mut self, event: RunEvent) -> Vec<Self::Chunk>;
    /// Chunks after the last event (usage, final timings).
    fn end(&mut self) -> Vec<Self::Chunk>;
    /// Whether the stream ends with `data: [DONE]`.
    fn done_marker(&self) -> bool {
        true
    }
}

struct State<T> {
    run: Option<Run>,
    translate: T,
    pending: VecDeque<SseEvent>,
    ended: bool,
}

/// The streaming response for `run`.
pub fn response<T: Translate>(run: Run, translate: T) -> Response {
    let state = State {
        run: Some(run),
        translate,
        pending: VecDeque::new(),
        ended: false,
    };
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            if state.ended {
                return None;
            }
            let next = match state.run.as_mut() {
                Some(run) => run.next().await,
                None => None,
            };
            match next {
                Some(Ok(event)) => {
                    let chunks = state.translate.event(event);
                    state.pending.extend(chunks.iter().map(data));
                }
                Some(Err(err)) => {
                    state.run = None;
                    state.pending.push_back(data(&err.body()));
                    finish(&mut state);
                }
                None => {
                    state.run = None;
                    let chunks = state.translate.end();
                    state.pending.extend(chunks.iter().map(data));
                    finish(&mut state);
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn finish<T: Translate>(state: &mut State<T>) {
    if state.translate.done_marker() {
        state.pending.push_back(SseEvent::default().data("[DONE]"));
    }
    state.ended = true;
}

fn data(chunk: &impl Serialize) -> SseEvent {
    // Wire types have string keys only, so this cannot fail; if it ever did, the client gets
    // an error event rather than a hole in the stream.
    let json = serde_json::to_string(chunk).unwrap_or_else(|e| {
        serde_json::json!({"error": {"message": format!("unserializable chunk: {e}"), "type": "server_error"}})
            .to_string()
    });
    SseEvent::default().data(json)
}
