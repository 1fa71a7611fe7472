//! The harness against a fake OpenAI-compatible server with known latencies (first token after
//! 60 ms, then one every 20 ms): the measured TTFT, ITL, TPOT, token counts and goodput must match
//! what the server did. Bounds allow for scheduling noise on a busy machine, never for a wrong
//! definition (e.g. TTFT including the whole request, or ITL over the first token).

use std::time::Duration;

use axum::response::sse::{Event, Sse};
use hearth_bench::load::{Load, Runner};
use hearth_bench::stats::{Slo, summarize};
use hearth_bench::target::Target;
use hearth_bench::workload::BenchRequest;

const FIRST: u64 = 60;
const GAP: u64 = 20;

async fn fake_completions(body: axum::Json<serde_json::Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = body["max_tokens"].as_u64().unwrap();
    if body["prompt"][0] == 999 {
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, "busy").into_response();
    }
    let stream = async_stream(n);
    Sse::new(stream).into_response()
}

fn async_stream(n: u64) -> impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(FIRST)).await;
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(GAP)).await;
            }
            let chunk = serde_json::json!({"choices": [{"index": 0, "text": format!(" w{i}"), "finish_reason": null}]});
            let _ = tx.send(Ok(Event::default().data(chunk.to_string()))).await;
        }
        let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}});
        let _ = tx.send(Ok(Event::default().data(usage.to_string()))).await;
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_what_the_server_did() {
    let app = axum::Router::new().route("/v1/completions", axum::routing::post(fake_completions));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let target = Target::openai(&format!("http://{addr}"), None).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let runner = Runner { target, time_limit: None, stop, on_done: None, seed: 1 };
    let mut requests: Vec<BenchRequest> =
        (0..12).map(|i| BenchRequest { prompt: vec![1, 2, i], max_tokens: 6 }).collect();
    requests.push(BenchRequest { prompt: vec![999], max_tokens: 6 }); // refused by the server
    let result = runner.run(requests, Load::Closed { concurrency: 4 }).await;
    assert_eq!(result.records.len(), 12);
    assert_eq!(result.errors.get("http_429"), Some(&1), "{:?}", result.errors);

    let s = summarize(&result, Slo { ttft: Some(0.5), tpot: Some(0.5) });
    let ms = |v: f64| v * 1e3;
    assert_eq!(s.output_tokens, 12 * 6);
    assert_eq!(s.input_tokens, 12 * 3);
    assert!((FIRST as f64..FIRST as f64 + 40.0).contains(&ms(s.ttft.p50)), "ttft p50 {}", ms(s.ttft.p50));
    assert!((GAP as f64 - 2.0..GAP as f64 + 15.0).contains(&ms(s.itl.p50)), "itl p50 {}", ms(s.itl.p50));
    assert_eq!(s.itl.count, 12 * 5, "one gap per token after the first");
    assert!((GAP as f64 - 2.0..GAP as f64 + 15.0).contains(&ms(s.tpot.p50)), "tpot p50 {}", ms(s.tpot.p50));
    let e2e = (FIRST + 5 * GAP) as f64;
    assert!((e2e..e2e + 60.0).contains(&ms(s.e2e.p50)), "e2e p50 {}", ms(s.e2e.p50));
    // Every request meets generous SLOs; none meets a 10 ms TTFT.
    assert!((s.goodput - s.request_throughput).abs() < 1e-9);
    assert_eq!(summarize(&result, Slo { ttft: Some(0.010), tpot: None }).goodput, 0.0);
    // 12 requests of ~160 ms over 4 clients: about 3 rounds.
    assert!(s.duration_s > 0.45 && s.duration_s < 2.0, "{}", s.duration_s);

    // Open loop at 40 req/s: arrivals do not wait for completions.
    let requests: Vec<BenchRequest> = (0..8).map(|i| BenchRequest { prompt: vec![i], max_tokens: 2 }).collect();
    let open = runner.run(requests, Load::Open { rate: 40.0, burstiness: 1.0 }).await;
    assert_eq!(open.records.len(), 8);
    let last_sent = open.records.iter().map(|r| r.sent_at).max().unwrap();
    assert!(last_sent < Duration::from_millis(800), "sent over {last_sent:?}, not one after another");
}
