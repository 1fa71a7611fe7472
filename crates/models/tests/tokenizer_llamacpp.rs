//! The tokenizer built from GGUF metadata must tokenize exactly as llama.cpp does.
//! Fixture: `fixtures/tokenizer_cases.json`, made by `fixtures/make_fixtures.py` (llama.cpp through
//! llama-cpp-python, `tokenize(text, add_bos=True, special=True)`). Required: 100% identical ids.

use hearth_models::{GgufFile, Tokenizer, store};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn tokenizer() -> Tokenizer {
    let g = GgufFile::open(store::default_model_for_tests()).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

#[test]
fn matches_llamacpp_on_every_fixture_case() {
    let fx: Fixture = serde_json::from_str(include_str!("fixtures/tokenizer_cases.json")).unwrap();
    assert!(fx.cases.len() >= 60, "fixture has {} cases", fx.cases.len());
    let tok = tokenizer();
    let mut bad = Vec::new();
    for c in &fx.cases {
        let ids = tok.encode(&c.text, true).unwrap();
        if ids != c.ids {
            bad.push(format!("{:?}\n  llama.cpp {:?}\n  hearth    {:?}", c.text, c.ids, ids));
        }
    }
    println!("tokenizer: {}/{} cases identical to llama.cpp", fx.cases.len() - bad.len(), fx.cases.len());
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn decode_round_trips_and_exports_loadable_json() {
    let tok = tokenizer();
    for text in ["Hello, world!", "¿Dónde está? 中文 😀", "def f():\n    return  1\n\n", "  two leading spaces"]
    {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
    // BOS is added only when asked, and special tokens are dropped on request.
    let with_bos = tok.encode("hi", true).unwrap();
    assert_eq!(with_bos[0], tok.bos().unwrap());
    assert_eq!(tok.decode(&with_bos, true).unwrap(), "hi");
    assert!(tok.is_eog(tok.eos()));

    // The exported tokenizer.json loads in `tokenizers` and tokenizes the same way.
    let json = tok.to_json(false).unwrap();
    let reloaded: tokenizers::Tokenizer = json.parse().unwrap();
    for text in ["<start_of_turn>user\nHi<end_of_turn>", "Some  text\n\nwith  spaces", "naïve café"] {
        let a = tok.encode(text, true).unwrap();
        let b = reloaded.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(a, b, "{text:?}");
    }
}

/// A checkpoint folder's tokenizer (tokenizer.json + config.json ids) tokenizes like the GGUF one it
/// was exported from, on every llama.cpp fixture case; EOS and end-of-turn end generation.
#[test]
fn hugging_face_tokenizer_files_load() {
    let tok = tokenizer();
    let dir = std::env::temp_dir().join(format!("hearth-hf-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tok.to_json(false).unwrap()).unwrap();
    let cfg = serde_json::json!({"bos_token_id": tok.bos(), "eos_token_id": [tok.eos()]});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let hf = Tokenizer::from_hf_files(&dir.join("tokenizer.json"), &dir.join("config.json")).unwrap();
    let fx: Fixture = serde_json::from_str(include_str!("fixtures/tokenizer_cases.json")).unwrap();
    for c in &fx.cases {
        assert_eq!(hf.encode(&c.text, true).unwrap(), c.ids, "{:?}", c.text);
    }
    assert_eq!((hf.bos(), hf.eos(), hf.vocab_size()), (tok.bos(), tok.eos(), tok.vocab_size()));
    let mut a = hf.eog_tokens().to_vec();
    let mut b = tok.eog_tokens().to_vec();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "EOS and <end_of_turn>");
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let err = Tokenizer::from_hf_files(&dir.join("tokenizer.json"), &dir.join("config.json")).unwrap_err();
    assert!(err.to_string().contains("eos_token_id"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
