//! One generation as the client sees it: engine events in, response chunks out.
//!
//! [`Generation`] owns the engine's [`RequestStream`]; dropping it (client gone, deadline, server
//! draining) aborts the request in the engine, which frees its KV blocks before its next step.
//! It turns token events into text with [`TextStream`], cuts at stop strings with [`StopMatcher`]
//! (then aborts the engine request and reports `STOP` with the string), attaches logprobs, and
//! records the request's metrics exactly once (at the end, or in `Drop` as `aborted`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use hearth_core::FinishReason;
use hearth_engine::{EngineEvent, EngineHandle, FinishInfo, RequestStream, TokenOut};
use hearth_models::Tokenizer;
use hearth_proto::v1;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::{self, RequestRecord};
use crate::state::Served;
use crate::text::{StopMatcher, TextStream};
use crate::validate::ValidRequest;

/// How a generation ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub reason: v1::FinishReason,
    pub stop_token: Option<u32>,
    pub stop_string: Option<String>,
    pub usage: v1::Usage,
}

/// What one response message carries (both the streamed and the unary form are built from it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<v1::TokenLogprob>,
    pub prompt_logprobs: Vec<v1::TokenLogprob>,
    pub finish: Option<Finish>,
}

pub struct Generation {
    pub request_id: String,
    engine: EngineHandle,
    stream: RequestStream,
    tok: Option<Arc<Tokenizer>>,
    text: TextStream,
    stops: StopMatcher,
    min_tokens: usize,
    logprobs: bool,
    generated: usize,
    prompt_tokens: usize,
    prompt_logprobs: Vec<v1::TokenLogprob>,
    last_tokens_at: Option<Instant>,
    /// When the request was submitted, and when its first token reached the server (latency
    /// metrics of requests that end without the engine's timings: deadline, abort, client gone).
    submitted: Instant,
    first_token_at: Option<Instant>,
    done: bool,
    recorded: bool,
    /// Outcome recorded if dropped before the end (`aborted` unless told otherwise).
    pub drop_outcome: &'static str,
    /// Output text kept for `--log-requests` only.
    log: Option<String>,
}

impl Generation {
    /// Submits the request to the engine (refused at once when the queue is full).
    pub fn start(served: &Served, valid: ValidRequest, log_requests: bool) -> Result<Self, ApiError> {
        let prompt_tokens = valid.engine.prompt.len();
        let min_tokens = valid.engine.min_tokens;
        let stream = served.engine.submit(valid.engine)?;
        let request_id = if valid.request_id.is_empty() { stream.id.to_string() } else { valid.request_id };
        Ok(Generation {
            request_id,
            engine: served.engine.clone(),
            stream,
            tok: served.tokenizer.clone(),
            text: TextStream::default(),
            stops: StopMatcher::new(valid.stop),
            min_tokens,
            logprobs: valid.logprobs,
            generated: 0,
            prompt_tokens,
            prompt_logprobs: Vec::new(),
            last_tokens_at: None,
            submitted: Instant::now(),
            first_token_at: None,
            done: false,
            recorded: false,
            drop_outcome: "aborted",
            log: log_requests.then(String::new),
        })
    }

    /// The next chunk; `None` after the chunk that carried the finish.
    pub async fn next(&mut self) -> Option<Result<Chunk, ApiError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(event) = self.stream.events.recv().await else {
                self.done = true;
                return Some(Err(self.fail("error", ErrorKind::Internal, "the engine stopped")));
            };
            match event {
                EngineEvent::PromptLogprobs(scores) => {
                    // Up to 21 decodes per prompt position: on a blocking thread.
                    let tok = self.tok.clone();
                    let lp = tokio::task::spawn_blocking(move || {
                        scores.iter().map(|t| token_logprob(tok.as_deref(), t)).collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    self.prompt_logprobs.extend(lp);
                }
                EngineEvent::Tokens(tokens) => return Some(Ok(self.tokens(tokens).await)),
                EngineEvent::Finished(info) => {
                    self.done = true;
                    return Some(self.finished(info));
                }
            }
        }
    }

    async fn tokens(&mut self, tokens: Vec<TokenOut>) -> Chunk {
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        if let Some(prev) = self.last_tokens_at {
            metrics::record_inter_token(now - prev, tokens.len());
        }
        self.last_tokens_at = Some(now);
        let mut chunk = Chunk { prompt_logprobs: std::mem::take(&mut self.prompt_logprobs), ..Chunk::default() };
        for t in tokens {
            self.generated += 1;
            chunk.token_ids.push(t.id);
            if self.logprobs {
                chunk.logprobs.push(token_logprob(self.tok.as_deref(), &t));
            }
            let delta = match &self.tok {
                Some(tok) => self.text.push(tok.as_ref(), t.id),
                None => String::new(),
            };
            if self.generated <= self.min_tokens {
                // Stop strings count only after min_tokens (vLLM's rule).
                chunk.text.push_str(&self.stops.finish());
                chunk.text.push_str(&delta);
                continue;
            }
            let (out, stop) = self.stops.push(&delta);
            chunk.text.push_str(&out);
            if let Some(stop) = stop {
                // Stop here: end the engine request and take its timings from the Finished event.
                // (`abort` may wait for room in the engine's command channel: not on the runtime.)
                let (engine, id) = (self.engine.clone(), self.stream.id);
                let _ = tokio::task::spawn_blocking(move || engine.abort(id)).await;
                let info = loop {
                    match self.stream.events.recv().await {
                        Some(EngineEvent::Finished(info)) => break Some(info),
                        Some(_) => {}
                        None => break None,
                    }
                };
                self.done = true;
                self.log_text(&chunk.text);
                let finish = self.finish_with(info, v1::FinishReason::Stop, None, Some(stop));
                chunk.finish = Some(finish);
                return chunk;
            }
        }
        self.log_text(&chunk.text);
        chunk
    }

    fn finished(&mut self, info: FinishInfo) -> Result<Chunk, ApiError> {
        let (reason, stop_token) = match &info.reason {
            FinishReason::Length => (v1::FinishReason::Length, None),
            FinishReason::Stop { token } => (v1::FinishReason::Stop, Some(*token)),
            FinishReason::Aborted => {
                return Err(self.fail("aborted", ErrorKind::Unavailable, "the request was aborted by the server"));
            }
            FinishReason::Error(e) => {
                let e = e.clone();
                return Err(self.fail("error", ErrorKind::Internal, &format!("the accelerator failed: {e}")));
            }
        };
        // The rest of the text: a held incomplete character, then text held for stop strings.
        let tail = match &self.tok {
            Some(tok) => self.text.flush(tok.as_ref()),
            None => String::new(),
        };
        let (mut text, stop) = if self.generated <= self.min_tokens {
            (self.stops.finish() + &tail, None) // stop strings count only after min_tokens
        } else {
            self.stops.push(&tail)
        };
        if stop.is_none() {
            text.push_str(&self.stops.finish());
        }
        self.log_text(&text);
        let finish = match stop {
            Some(s) => self.finish_with(Some(info), v1::FinishReason::Stop, None, Some(s)),
            None => self.finish_with(Some(info), reason, stop_token, None),
        };
        Ok(Chunk {
            text,
            prompt_logprobs: std::mem::take(&mut self.prompt_logprobs),
            finish: Some(finish),
            ..Chunk::default()
        })
    }

    fn finish_with(
        &mut self,
        info: Option<FinishInfo>,
        reason: v1::FinishReason,
        stop_token: Option<u32>,
        stop_string: Option<String>,
    ) -> Finish {
        let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        // A stop string ends the request early: count the tokens the client got.
        let completion = match (&stop_string, &info) {
            (None, Some(i)) => i.generated_tokens,
            _ => self.generated,
        };
        let usage = v1::Usage {
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: completion as u32,
            cached_tokens: info.as_ref().map_or(0, |i| i.cached_tokens as u32),
            queue_seconds: secs(info.as_ref().map(|i| i.queue_time)),
            time_to_first_token_seconds: secs(info.as_ref().and_then(|i| i.time_to_first_token)),
            total_seconds: secs(info.as_ref().map(|i| i.total_time)),
        };
        let outcome = if reason == v1::FinishReason::Length { "length" } else { "stop" };
        self.record(RequestRecord {
            outcome,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: completion,
            queue_time: info.as_ref().map(|i| i.queue_time),
            time_to_first_token: info.as_ref().and_then(|i| i.time_to_first_token),
            total_time: info.as_ref().map(|i| i.total_time),
        });
        if let Some(out) = &self.log {
            tracing::info!(request_id = %self.request_id, output = %out, ?reason, "request finished");
        }
        Finish { reason, stop_token, stop_string, usage }
    }

    /// Ends the request with an error, recorded under `outcome`.
    pub fn fail(&mut self, outcome: &'static str, kind: ErrorKind, message: &str) -> ApiError {
        self.done = true;
        self.record_unfinished(outcome);
        ApiError::new(kind, message)
    }

    /// A request that ends without the engine's timings: latencies as the server saw them.
    fn record_unfinished(&mut self, outcome: &'static str) {
        self.record(RequestRecord {
            outcome,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated,
            queue_time: None,
            time_to_first_token: self.first_token_at.map(|t| t - self.submitted),
            total_time: Some(self.submitted.elapsed()),
        });
    }

    fn record(&mut self, r: RequestRecord) {
        if !self.recorded {
            self.recorded = true;
            metrics::record_request(&r);
        }
    }

    fn log_text(&mut self, text: &str) {
        if let Some(out) = self.log.as_mut() {
            out.push_str(text);
        }
    }
}

/// What ends a generation early besides the engine: the client's deadline and the server's abort
/// at the end of its shutdown grace.
pub struct Bounds {
    pub deadline: Option<Instant>,
    pub aborted: watch::Receiver<bool>,
}

impl Generation {
    /// The next chunk, or the error that ends the generation early (deadline, server abort).
    pub async fn next_within(&mut self, b: &mut Bounds) -> Option<Result<Chunk, ApiError>> {
        tokio::select! {
            c = self.next() => c,
            () = until(b.deadline) => {
                Some(Err(self.fail("deadline", ErrorKind::Deadline, "the deadline passed; the request was stopped")))
            }
            () = aborted_signal(&mut b.aborted) => {
                Some(Err(self.fail("aborted", ErrorKind::Unavailable, "the server is shutting down")))
            }
        }
    }

    /// The whole generation as one chunk (unary responses).
    pub async fn collect(mut self, mut b: Bounds) -> Result<Chunk, ApiError> {
        let mut all = Chunk::default();
        while let Some(c) = self.next_within(&mut b).await {
            let c = c?;
            all.token_ids.extend(c.token_ids);
            all.text.push_str(&c.text);
            all.logprobs.extend(c.logprobs);
            all.prompt_logprobs.extend(c.prompt_logprobs);
            all.finish = c.finish.or(all.finish);
        }
        Ok(all)
    }

    /// Streams the generation into `tx`, whose receiver is the response body: each chunk as
    /// `msgs(chunk)`, an error as `err(e)`, then `end` after the last chunk. Returns (dropping the
    /// engine stream, which aborts the request) when the client goes away, and also while a send
    /// waits on a client that stopped reading, once the deadline or the server's abort comes.
    pub async fn pump<T>(
        mut self,
        mut b: Bounds,
        tx: mpsc::Sender<T>,
        msgs: impl Fn(Chunk) -> Vec<T>,
        err: impl Fn(ApiError) -> T,
        end: Option<T>,
    ) {
        loop {
            let next = tokio::select! {
                c = self.next_within(&mut b) => c,
                () = tx.closed() => return, // client gone: recorded as aborted on drop
            };
            let chunk = match next {
                None => {
                    if let Some(end) = end {
                        let _ = tx.send(end).await;
                    }
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(err(e)).await;
                    return;
                }
                Some(Ok(c)) => c,
            };
            for m in msgs(chunk) {
                tokio::select! {
                    r = tx.send(m) => if r.is_err() { return },
                    () = until(b.deadline) => {
                        self.fail("deadline", ErrorKind::Deadline, "the deadline passed");
                        return;
                    }
                    () = aborted_signal(&mut b.aborted) => {
                        self.fail("aborted", ErrorKind::Unavailable, "the server is shutting down");
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps until the deadline (forever without one).
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the server aborts in-flight work (end of the shutdown grace).
async fn aborted_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await; // the state is gone: never
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.recorded {
            self.record_unfinished(self.drop_outcome);
        }
        // Dropping `stream` closes the receiver: the engine aborts the request before its next step.
    }
}

/// A token with its logprob and alternatives, their texts decoded.
fn token_logprob(tok: Option<&Tokenizer>, t: &TokenOut) -> v1::TokenLogprob {
    let piece = |id: u32| tok.map(|tok| tok.decode(&[id], false).unwrap_or_default()).unwrap_or_default();
    v1::TokenLogprob {
        token_id: t.id,
        logprob: t.logprob.unwrap_or(f32::NAN),
        token: piece(t.id),
        top: t.top.iter().map(|&(id, lp)| v1::TopLogprob { token_id: id, logprob: lp, token: piece(id) }).collect(),
    }
}
