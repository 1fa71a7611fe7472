//! A small hearth client: streams one completion over gRPC and prints it as it arrives.
//!
//! ```text
//! cargo run -p hearth-server --example client -- "The capital of France is"
//! HEARTH_ADDR=http://10.0.0.5:50051 cargo run -p hearth-server --example client -- "Hello"
//! ```

use hearth_proto::v1::generation_client::GenerationClient;
use hearth_proto::v1::{GenerateRequest, SamplingParams, StoppingCriteria, generate_request::Prompt};
use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("HEARTH_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "The capital of France is".into());
    let mut client = GenerationClient::connect(addr).await?;
    let request = GenerateRequest {
        prompt: Some(Prompt::Text(prompt)),
        sampling: Some(SamplingParams { temperature: Some(0.7), seed: Some(1), ..Default::default() }),
        stopping: Some(StoppingCriteria { max_tokens: Some(64), stop: vec!["\n\n".into()], ..Default::default() }),
        ..Default::default()
    };
    let mut stream = client.generate_stream(request).await?.into_inner();
    while let Some(msg) = stream.message().await? {
        print!("{}", msg.text);
        std::io::stdout().flush()?;
        if let Some(usage) = msg.usage {
            println!(
                "\n[{} prompt + {} generated tokens, first token after {:.0} ms]",
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.time_to_first_token_seconds * 1e3
            );
        }
    }
    Ok(())
}
