//! `hearth models …` and the model-selection flags shared by every command that loads a model.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use hearth_models::store::{self, DEFAULT_MODEL, ModelStore};
use hearth_models::{GgufFile, Tokenizer};

/// Which model to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model name from the manifests in `models/` (see `hearth models list`).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// A GGUF file to load instead of a named model (no checksum is known for it), or a Hugging
    /// Face checkpoint folder (config.json + *.safetensors, Llama family; tokenizer.json when present,
    /// else give prompts as --prompt-ids).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Where named models are stored.
    #[arg(long, env = "HEARTH_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelArgs {
    pub fn store(&self) -> ModelStore {
        ModelStore::new(self.model_dir.clone().unwrap_or_else(ModelStore::default_dir))
    }

    /// The GGUF path to load: a named model is verified against its manifest first.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.model_path {
            tracing::warn!(path = %p.display(), "loading a GGUF file by path: no checksum to verify");
            return Ok(p.clone());
        }
        let m = store::manifest(&self.model)?;
        Ok(self.store().verified_path(&m)?)
    }

    pub fn open(&self) -> anyhow::Result<GgufFile> {
        Ok(GgufFile::open(self.resolve()?)?)
    }

    /// The model file and, for a named model, the sha256 it was just verified against.
    pub fn open_verified(&self) -> anyhow::Result<(GgufFile, Option<String>)> {
        let checksum = match &self.model_path {
            Some(_) => None,
            None => Some(store::manifest(&self.model)?.sha256),
        };
        Ok((self.open()?, checksum))
    }
}

/// The model's tokenizer alone (GGUF metadata, or a checkpoint folder's tokenizer.json).
pub fn tokenizer(m: &ModelArgs) -> anyhow::Result<Tokenizer> {
    if let Some(dir) = m.model_path.as_ref().filter(|p| p.is_dir()) {
        return Ok(Tokenizer::from_hf_files(&dir.join("tokenizer.json"), &dir.join("config.json"))?);
    }
    Ok(Tokenizer::from_gguf(&m.open()?)?)
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Fetch a model into the local store and verify it (does nothing if already there).
    Pull {
        /// Model name (see `hearth models list`).
        #[arg(default_value = DEFAULT_MODEL)]
        name: String,
        #[arg(long, env = "HEARTH_MODEL_DIR")]
        model_dir: Option<PathBuf>,
    },
    /// List known models and whether each is present and verified.
    List {
        #[arg(long, env = "HEARTH_MODEL_DIR")]
        model_dir: Option<PathBuf>,
    },
    /// Write the model's tokenizer as a Hugging Face `tokenizer.json`.
    ExportTokenizer {
        #[command(flatten)]
        model: ModelArgs,
        /// Output file.
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
    },
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let store_at = |d: Option<PathBuf>| ModelStore::new(d.unwrap_or_else(ModelStore::default_dir));
    match cmd {
        ModelsCommand::Pull { name, model_dir } => {
            let m = store::manifest(&name)?;
            let path = store_at(model_dir).pull(&m, &mut |line| eprintln!("{line}"))?;
            println!("{}", path.display());
        }
        ModelsCommand::List { model_dir } => {
            let store = store_at(model_dir);
            for m in store::manifests()? {
                let state = match store.verified_path(&m) {
                    Ok(p) => format!("verified at {}", p.display()),
                    Err(e) => e.to_string(),
                };
                println!("{}\t{}\t{} bytes\t{}", m.name, m.architecture, m.size, state);
                println!("\tlicense: {}", m.license);
            }
        }
        ModelsCommand::ExportTokenizer { model, out } => {
            let g = model.open()?;
            let tok = Tokenizer::from_gguf(&g)?;
            std::fs::write(&out, tok.to_json(false)?).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
        }
    }
    Ok(())
}
