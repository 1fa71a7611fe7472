//! The `hearth` binary end to end: generation on the real model, model-store errors, tokenizer export.

use std::process::Command;

fn hearth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

fn model_dir() -> std::path::PathBuf {
    hearth_models::store::default_model_for_tests().parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn generate_streams_the_greedy_continuation() {
    let out = hearth()
        .args(["generate", "--prompt", "The capital of France is", "--max-tokens", "8", "--model-dir"])
        .arg(model_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // llama.cpp's greedy continuation of this prompt starts the same way (fixture p00).
    assert_eq!(String::from_utf8_lossy(&out.stdout), " the capital of the country of France.\n");
    assert!(stderr.contains("tok/s"), "{stderr}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = || {
        let out = hearth()
            .args(["generate", "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0.9"])
            .args(["--seed", "1234", "--model-dir"])
            .arg(model_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(run(), run());
}

#[test]
fn clear_errors_for_missing_model_and_long_prompt() {
    let empty = std::env::temp_dir().join(format!("hearth-cli-empty-{}", std::process::id()));
    let out = hearth().args(["generate", "--prompt", "hi", "--model-dir"]).arg(&empty).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hearth models pull gemma3-270m"), "{stderr}");

    let out = hearth()
        .args(["generate", "--prompt", "hi", "--max-tokens", "100000000", "--model-dir"])
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds the context"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = hearth()
        .args(["generate", "--prompt", "hi", "--temperature", "1", "--top-p", "1.5", "--model-dir"])
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("top_p: must be in (0, 1]"), "{stderr}");
}

#[test]
fn exports_a_tokenizer_json() {
    let path = std::env::temp_dir().join(format!("hearth-tokenizer-{}.json", std::process::id()));
    let out = hearth()
        .args(["models", "export-tokenizer", "--out"])
        .arg(&path)
        .arg("--model-dir")
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tok = tokenizers::Tokenizer::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(tok.encode("The capital of France is", true).unwrap().get_ids(), &[2, 818, 5279, 529, 7001, 563]);
}
