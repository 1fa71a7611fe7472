//! The tokenizer, built from GGUF metadata with the `tokenizers` crate.
//!
//! Only SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`, as Gemma uses) are
//! supported. llama.cpp tokenizes them by first splitting out every control and user-defined token
//! found in the raw text (longest first), then replacing spaces with `▁` and repeatedly merging the
//! adjacent pair whose concatenation is the highest-scoring vocabulary entry, with bytes as the
//! fallback for characters outside the vocabulary. We express exactly that as a `tokenizers` BPE:
//! merges are every split of a normal token into two normal tokens, ranked by the merged token's
//! score; control and user-defined tokens are added tokens matched on raw text; a `Replace`
//! normalizer escapes spaces; byte fallback is on. The committed fixture (made by llama.cpp, see
//! `tests/fixtures/`) checks the equivalence id for id. The same object serializes to a
//! `tokenizer.json` that other tools load.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

// llama.cpp token types (tokenizer.ggml.token_type).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Text ↔ token ids for one model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    eos: u32,
    /// Tokens that end generation (EOS and end-of-turn markers).
    eog: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size).field("bos", &self.bos).finish()
    }
}

fn tk_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "llama" {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer model `{model}` is not supported (supported: llama/SentencePiece)"
            )));
        }
        if g.has("tokenizer.ggml.add_space_prefix") && g.get_bool("tokenizer.ggml.add_space_prefix")? {
            return Err(ModelError::Tokenizer("add_space_prefix=true is not supported yet".into()));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let scores = g.get_f32_array("tokenizer.ggml.scores")?;
        let types = g.get_i32_array("tokenizer.ggml.token_type")?;
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(ModelError::Tokenizer(format!(
                "{} tokens but {} scores and {} types",
                tokens.len(),
                scores.len(),
                types.len()
            )));
        }
        let bos = if g.has("tokenizer.ggml.bos_token_id") {
            Some(g.get_u64("tokenizer.ggml.bos_token_id")? as u32)
        } else {
            None
        };
        let eos = g.get_u64("tokenizer.ggml.eos_token_id")? as u32;
        let add_bos =
            bos.is_some() && (!g.has("tokenizer.ggml.add_bos_token") || g.get_bool("tokenizer.ggml.add_bos_token")?);
        let unk = g.get_u64("tokenizer.ggml.unknown_token_id").ok().map(|i| i as usize);

        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if vocab.insert((*t).to_string(), id as u32).is_some() {
                return Err(ModelError::Tokenizer(format!("duplicate token text {t:?}")));
            }
        }
        let merges = merges_from_scores(&tokens, &scores, &types, &vocab);
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
        if let Some(u) = unk {
            bpe = bpe.unk_token(tokens[u].to_string());
        }
        let bpe = bpe.build().map_err(tk_err)?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(NormalizerWrapper::Replace(Replace::new(" ", "▁").map_err(tk_err)?)))
            .map_err(tk_err)?;
        inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
            DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tk_err)?),
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
        ]))));
        if let (Some(b), true) = (bos, add_bos) {
            let text = tokens[b as usize].to_string();
            let post = TemplateProcessing::builder()
                .try_single(format!("{text}:0 $A:0"))
                .map_err(tk_err)?
                .try_pair(format!("{text}:0 $A:0 $B:1"))
                .map_err(tk_err)?
                .special_tokens(vec![(text, b)])
                .build()
                .map_err(tk_err)?;
            inner.with_post_processor(Some(PostProcessorWrapper::Template(post)));
        }
        // Control (and unknown) tokens are special: matched in text, skipped when decoding for
        // display. User-defined tokens (newline and space runs, HTML tags) are matched in text too
        // but decode as their text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| matches!(**ty, TYPE_CONTROL | TYPE_UNKNOWN | TYPE_USER_DEFINED))
            .map(|(t, ty)| AddedToken::from(t.to_string(), *ty != TYPE_USER_DEFINED).normalized(false))
            .collect();
        let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        inner.add_special_tokens(special).map_err(tk_err)?;
        inner.add_tokens(plain).map_err(tk_err)?;

        let mut eog = vec![eos];
        for name in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokens.iter().position(|t| *t == name) {
                let id = id as u32;
                if !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        Ok(Tokenizer { inner, bos, add_bos, eos, eog, vocab_size: tokens.len() })
    }

    /// A Hugging Face checkpoint's tokenizer: its `tokenizer.json` (which carries its own BOS
    /// template) and the BOS/EOS ids of its `config.json` (`eos_token_id` may be a list); the
    /// end-of-turn markers hearth knows are added to the tokens that end generation.
    pub fn from_hf_files(tokenizer_json: &std::path::Path, config_json: &std::path::Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        let text = std::fs::read_to_string(config_json)
            .map_err(|source| ModelError::Io { path: config_json.to_path_buf(), source })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", config_json.display())))?;
        let id = |v: &serde_json::Value| v.as_u64().map(|x| x as u32);
        let bos = cfg.get("bos_token_id").and_then(id);
        let mut eog: Vec<u32> = match cfg.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(id).collect(),
            Some(v) => id(v).into_iter().collect(),
            None => Vec::new(),
        };
        let eos =
            *eog.first().ok_or_else(|| ModelError::Tokenizer(format!("{}: no eos_token_id", config_json.display())))?;
        for name in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>"] {
            if let Some(t) = inner.token_to_id(name)
                && !eog.contains(&t)
            {
                eog.push(t);
            }
        }
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer { inner, bos, add_bos: true, eos, eog, vocab_size })
    }

    /// Token ids of `text`; special-token text (e.g. `<start_of_turn>`) becomes its token, as in
    /// llama.cpp with `parse_special`. `add_bos` prepends BOS when the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, add_bos && self.add_bos).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; control tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tk_err)
    }

    /// The text of one token as it would appear in the output (bytes, not yet valid UTF-8 on its own
    /// for byte-fallback tokens).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Every token that ends generation (EOS and end-of-turn markers).
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// A `tokenizer.json` that Hugging Face `tokenizers` (and tools built on it) can load.
    pub fn to_json(&self, pretty: bool) -> Result<String> {
        self.inner.to_string(pretty).map_err(tk_err)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Merges equivalent to SentencePiece's score-driven pair merging: every split of a normal token
/// into two normal tokens, ordered by the merged token's score (highest first).
fn merges_from_scores(tokens: &[&str], scores: &[f32], types: &[i32], vocab: &Vocab) -> Vec<(String, String)> {
    let normal = |id: u32| types[id as usize] == TYPE_NORMAL;
    let mut merges: Vec<(f32, u32, usize, String, String)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if types[id] != TYPE_NORMAL || t.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r))
                && normal(li)
                && normal(ri)
            {
                merges.push((scores[id], id as u32, split, l.to_string(), r.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}
