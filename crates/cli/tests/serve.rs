//! `hearth serve` end to end: the real binary on 127.0.0.1 (ports picked by the OS) with the real
//! model, driven by a tonic client, with `/metrics` scraped over HTTP and parsed as Prometheus
//! text. Each test starts its own server and stops it by PID (SIGTERM, then kill on failure).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_proto::v1::generation_client::GenerationClient;
use hearth_proto::v1::{self, generate_request::Prompt};
use tonic::Code;
use tonic::transport::Channel;

fn hearth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

fn model_dir() -> std::path::PathBuf {
    hearth_models::store::default_model_for_tests().parent().unwrap().parent().unwrap().to_path_buf()
}

/// A running `hearth serve`; killed on drop if a test failed before stopping it.
struct Server {
    child: Child,
    grpc: String,
    http: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = hearth()
            .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--model-dir"])
            .arg(model_dir())
            .args(extra)
            .env("HEARTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut grpc, mut http) = (String::new(), String::new());
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(120), "the server did not become ready");
            let line = lines.next().expect("the server exited before it was ready").unwrap();
            if let Some(rest) = line.strip_prefix("hearth: listening: gRPC ") {
                let mut parts = rest.split([',', ' ']).filter(|s| !s.is_empty());
                grpc = parts.next().unwrap().to_string();
                assert_eq!(parts.next(), Some("HTTP"));
                http = parts.next().unwrap().to_string();
            }
            if line.starts_with("hearth: ready") {
                break;
            }
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, grpc, http }
    }

    async fn client(&self) -> GenerationClient<Channel> {
        GenerationClient::connect(format!("http://{}", self.grpc)).await.unwrap()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// GET on the HTTP port: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.http).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        parse_prometheus(&body)
    }

    /// Polls `/metrics` until `f` holds (at most 30 s).
    fn wait_metrics(&self, what: &str, f: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
        let start = Instant::now();
        loop {
            let m = self.metrics();
            if f(&m) {
                return m;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {m:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses Prometheus text format: every sample line is `name{labels} value`, every sample's
/// family has a `# TYPE`; returns `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "{line}");
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !name.is_empty(),
            "bad name: {line}"
        );
        if let Some(labels) = key.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line}");
            for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(!k.is_empty() && v.starts_with('"'), "bad label: {line}");
            }
        }
        let family =
            ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| types.contains_key(*f));
        assert!(types.contains_key(family.unwrap_or(name)), "no # TYPE for {name}");
        samples.insert(key.to_string(), value);
    }
    samples
}

fn request(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: Some(Prompt::Text(text.into())),
        sampling: Some(v1::SamplingParams { temperature: Some(0.0), ..Default::default() }),
        stopping: Some(v1::StoppingCriteria { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }),
        ..Default::default()
    }
}

/// Streams a request to its end: (token ids, text, last message).
async fn stream(
    c: &mut GenerationClient<Channel>,
    r: v1::GenerateRequest,
) -> (Vec<u32>, String, v1::GenerateStreamResponse) {
    let mut s = c.generate_stream(r).await.unwrap().into_inner();
    let (mut ids, mut text, mut last) = (Vec::new(), String::new(), None);
    while let Some(m) = s.message().await.unwrap() {
        ids.extend(&m.token_ids);
        text.push_str(&m.text);
        last = Some(m);
    }
    (ids, text, last.expect("at least one message"))
}

fn counter(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_match_generate_run_concurrently_and_are_counted() {
    let server = Server::start(&["--kv-cache-memory", "256MiB"]);
    let mut c = server.client().await;

    // The same seed gives the same text as `hearth generate`.
    let prompt = "Once upon a time, in a quiet village,";
    let out = hearth()
        .args(["generate", "--prompt", prompt, "--max-tokens", "20", "--temperature", "0.8", "--seed", "11"])
        .arg("--model-dir")
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_text = String::from_utf8(out.stdout).unwrap();
    let mut r = request(prompt, 20);
    r.sampling = Some(v1::SamplingParams { temperature: Some(0.8), seed: Some(11), ..Default::default() });
    r.stopping.as_mut().unwrap().ignore_eos = false;
    let (_, text, last) = stream(&mut c, r).await;
    assert_eq!(format!("{text}\n"), cli_text, "the server streams what `hearth generate` prints");
    let mut finished = BTreeMap::<&str, f64>::new();
    let outcome = |m: &v1::GenerateStreamResponse| {
        if m.finish_reason == v1::FinishReason::Length as i32 { "length" } else { "stop" }
    };
    *finished.entry(outcome(&last)).or_default() += 1.0;

    // 16 concurrent streams all complete.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move { stream(&mut c, request(&format!("Fact number {i} about the sea:"), 8)).await })
        })
        .collect();
    for t in tasks {
        let (ids, _, last) = t.await.unwrap();
        assert_eq!((ids.len(), last.finish_reason), (8, v1::FinishReason::Length as i32));
        assert_eq!(last.usage.unwrap().completion_tokens, 8);
    }
    *finished.entry("length").or_default() += 16.0;

    // A client that disconnects mid-stream frees its KV blocks while another stream continues.
    let mut gone = c.generate_stream(request("Tell me a very long story about", 400)).await.unwrap().into_inner();
    let mut stays = c.generate_stream(request("Count slowly from one:", 48)).await.unwrap().into_inner();
    gone.message().await.unwrap().unwrap();
    stays.message().await.unwrap().unwrap();
    let before = server.wait_metrics("two running requests", |m| counter(m, "hearth_num_requests_running") == 2.0);
    let used_two = counter(&before, "hearth_kv_cache_blocks{state=\"used\"}");
    drop(gone);
    let after =
        server.wait_metrics("the abandoned request to go", |m| counter(m, "hearth_num_requests_running") <= 1.0);
    assert!(counter(&after, "hearth_kv_cache_blocks{state=\"used\"}") < used_two, "its blocks were freed");
    let mut n = 1;
    let last = loop {
        let m = stays.message().await.unwrap().unwrap();
        n += m.token_ids.len();
        if m.finish_reason != 0 {
            break m;
        }
    };
    assert_eq!((n, last.finish_reason), (48, v1::FinishReason::Length as i32), "the other stream went on");
    *finished.entry("length").or_default() += 1.0;

    // A deadline stops a generation.
    let mut req = tonic::Request::new(request("Write an essay about rivers:", 400));
    req.set_timeout(Duration::from_millis(500));
    let e = c.generate(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());

    // The counters match what was sent; nothing is left running and no block leaked.
    let m = server.wait_metrics("idle with every request counted", |m| {
        counter(m, "hearth_num_requests_running") == 0.0
            && counter(m, "hearth_requests_total{outcome=\"aborted\"}") == 1.0
            && counter(m, "hearth_requests_total{outcome=\"deadline\"}") == 1.0
    });
    for (outcome, n) in &finished {
        assert_eq!(counter(&m, &format!("hearth_requests_total{{outcome=\"{outcome}\"}}")), *n, "{outcome}");
    }
    let total: f64 = m.iter().filter(|(k, _)| k.starts_with("hearth_requests_total{")).map(|(_, v)| v).sum();
    assert_eq!(total, finished.values().sum::<f64>() + 2.0, "{m:?}");
    // Every request that got a first token has a TTFT, including the abandoned and timed-out ones.
    let ttfts = counter(&m, "hearth_time_to_first_token_seconds_count");
    let n = finished.values().sum::<f64>();
    assert!(ttfts >= n + 1.0 && ttfts <= n + 2.0, "{ttfts} TTFTs for {n} finished + 2 ended early");
    assert_eq!(counter(&m, "hearth_e2e_request_latency_seconds_count"), n + 2.0, "every request has an e2e latency");
    assert_eq!(counter(&m, "hearth_kv_cache_blocks{state=\"used\"}"), 0.0);
    assert!(counter(&m, "hearth_generation_tokens_total") >= 20.0 + 16.0 * 8.0 + 48.0);
    assert!(counter(&m, "hearth_step_duration_seconds_count{kind=\"decode\"}") > 0.0);
    assert!(counter(&m, "process_resident_memory_bytes") > 1e8);
    assert_eq!(server.get("/ready"), (200, "ready\n".into()));

    let status = Command::new("kill").args(["-TERM", &server.pid()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_refused_at_once_and_sigterm_drains() {
    // Settings from a config file (one running slot, two waiting places); a flag beats the file.
    let config = std::env::temp_dir().join(format!("hearth-serve-{}.toml", std::process::id()));
    std::fs::write(&config, "max-num-seqs = 1\nmax-waiting = 2\nmax-tokens-cap = 100\nlog-requests = false\n").unwrap();
    let cfg = config.to_str().unwrap();
    let mut server = Server::start(&["--config", cfg, "--max-tokens-cap", "64", "--kv-cache-memory", "64MiB"]);
    std::fs::remove_file(&config).unwrap();
    let c = server.client().await;
    let mut models =
        hearth_proto::v1::models_client::ModelsClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let info = models.model_info(v1::ModelInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!(info.max_tokens_cap, 64, "the flag overrides the file");

    // 12 at once against one running slot and two waiting places.
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let r = c.generate(request(&format!("Item {i}:"), 12)).await;
                (r.map(|r| r.into_inner().token_ids.len()), t0.elapsed())
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut served = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (Ok(n), at) => served.push((n, at)),
            (Err(e), at) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                refused.push(at);
            }
        }
    }
    // Two waiting places are always there; the running slot counts only once the engine has
    // scheduled the first request, which may come after the others arrive (so 2 or more are served).
    assert!(refused.len() >= 6, "{} refused", refused.len());
    assert!(served.len() >= 2, "{} served", served.len());
    assert!(served.iter().all(|(n, _)| *n == 12), "{served:?}");
    let first_done = served.iter().map(|(_, at)| *at).min().unwrap();
    assert!(refused.iter().all(|at| *at < first_done), "refusals come at once, before any generation ends");
    let m = server.metrics();
    assert_eq!(counter(&m, "hearth_requests_total{outcome=\"rejected\"}"), refused.len() as f64);

    // SIGTERM: NOT_SERVING, new work refused, the in-flight stream finishes, exit status 0.
    let mut s = c.clone().generate_stream(request("A long list of fruits:", 40)).await.unwrap().into_inner();
    let mut n = s.message().await.unwrap().unwrap().token_ids.len();
    assert!(Command::new("kill").args(["-TERM", &server.pid()]).status().unwrap().success());
    let start = Instant::now();
    loop {
        let out = hearth().args(["health", "--addr", &format!("http://{}", server.grpc)]).output().unwrap();
        if !out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "NOT_SERVING");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still SERVING after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = c.clone().generate(request("Hello", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    let last = loop {
        let m = s.message().await.unwrap().unwrap();
        n += m.token_ids.len();
        if m.finish_reason != 0 {
            break m;
        }
    };
    assert_eq!((n, last.finish_reason), (40, v1::FinishReason::Length as i32), "drained, not cut");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn health_reports_unreachable_servers_and_config_files_apply() {
    // Nothing listens on port 1: the probe fails with exit status 1.
    let out = hearth().args(["health", "--addr", "http://127.0.0.1:1", "--timeout", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("UNREACHABLE"));

    // A config file with an unknown key is refused, naming the key.
    let dir = std::env::temp_dir().join(format!("hearth-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nmax-tokenz = 5\n").unwrap();
    let out = hearth().args(["serve", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting `max-tokenz`"));
    // A bad value is reported by the flag parser, naming the flag.
    let wrong = dir.join("wrong.toml");
    std::fs::write(&wrong, "max-tokens-cap = \"many\"\n").unwrap();
    let out = hearth().args(["serve", "--config"]).arg(&wrong).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-tokens-cap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `hearth bench` against the real server, over gRPC and over the OpenAI-compatible HTTP API.
#[test]
fn bench_measures_a_real_server_over_grpc_and_http() {
    let server = Server::start(&["--kv-cache-memory", "64MiB"]);
    let dir = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (api, addr) in [("grpc", format!("http://{}", server.grpc)), ("openai", format!("http://{}", server.http))] {
        let json = dir.join(format!("{api}.json"));
        let out = hearth()
            .args(["bench", "--api", api, "--addr", &addr, "--concurrency", "1,3", "--requests", "6"])
            .args(["--input-len", "24", "--output-len", "5", "--no-progress", "--slo-ttft", "60", "--json"])
            .arg(&json)
            .arg("--model-dir")
            .arg(model_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{api}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("concurrency 3") && stdout.contains("ttft p50"), "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for r in runs {
            let s = &r["summary"];
            assert_eq!((s["completed"].as_u64(), s["failed"].as_u64()), (Some(6), Some(0)), "{api}: {s}");
            assert_eq!(s["output_tokens"].as_u64(), Some(30), "{api}: exact output lengths");
            assert_eq!(s["input_tokens"].as_u64(), Some(6 * 24), "{api}: exact input lengths");
            let ttft = s["ttft"]["p50"].as_f64().unwrap();
            assert!(ttft > 0.0 && ttft <= s["e2e"]["p50"].as_f64().unwrap());
            assert!(s["goodput"].as_f64().unwrap() > 0.0);
        }
        assert_eq!(v["config"]["api"], api);
        assert!(v["environment"]["cpus"].as_u64().unwrap() >= 1);
    }
    // Without a tokenizer (as for a server on dummy weights): random ids below a vocabulary size.
    let out = hearth()
        .args(["bench", "--addr", &format!("http://{}", server.grpc), "--random-ids", "5000", "--requests", "3"])
        .args(["--input-len", "12", "--output-len", "2", "--no-progress", "--model", "no-such-model"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("concurrency 1              3    0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `hearth serve --backend static-cpu` (compiled bucket shapes, slot KV) streams the dynamic CPU
/// backend's greedy tokens for concurrent requests (more than the slots, so slots are reused;
/// prompts and contexts crossing bucket boundaries), counts its padding, and refuses what its
/// graphs cannot return, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_cpu_serves_the_dynamic_backends_tokens() {
    let statik = Server::start(&[
        "--backend",
        "static-cpu",
        "--static-slots",
        "3",
        "--static-max-len",
        "256",
        "--static-grid",
        "tuned",
    ]);
    let dynamic = Server::start(&["--backend", "cpu", "--kv-cache-memory", "64MiB"]);
    let prompts: Vec<(String, u32)> = (0..5)
        .map(|i| (format!("Item {i}: {}", "a list of colours, ".repeat(1 + 4 * i)), [12, 40, 6, 30, 20][i]))
        .collect();
    let run = |server: &Server| {
        let addr = format!("http://{}", server.grpc);
        let prompts = prompts.clone();
        async move {
            let c = GenerationClient::connect(addr).await.unwrap();
            let tasks: Vec<_> = prompts
                .into_iter()
                .map(|(p, n)| {
                    let mut c = c.clone();
                    tokio::spawn(async move { stream(&mut c, request(&p, n)).await.0 })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let got = run(&statik).await;
    let want = run(&dynamic).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i}");
        assert_eq!(g.len() as u32, prompts[i].1);
    }
    let m = statik.metrics();
    assert!(counter(&m, "hearth_padding_tokens_total") > 0.0, "static shapes pad");
    assert!(counter(&m, "hearth_computed_tokens_total") > counter(&m, "hearth_padding_tokens_total"));
    assert_eq!(counter(&dynamic.metrics(), "hearth_padding_tokens_total"), 0.0);

    let mut c = statik.client().await;
    let mut r = request("Hello", 4);
    r.prompt_logprobs = Some(1);
    let e = c.generate(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("prompt_logprobs: the static-cpu backend"), "{}", e.message());
}

/// `--backend neuron` says what it needs: a manifest, then a readable one (no Neuron runtime is
/// installed here, so nothing further can load).
#[test]
fn neuron_backend_names_what_is_missing() {
    let run = |extra: &[&str]| {
        let out = hearth()
            .args(["generate", "--backend", "neuron", "--prompt", "Hi", "--model-dir"])
            .arg(model_dir())
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&[]).contains("--backend neuron needs --neuron-manifest"));
    let missing = run(&["--neuron-manifest", "/nonexistent/manifest.json"]);
    assert!(missing.contains("/nonexistent/manifest.json"), "{missing}");
}
