//! Engine and KV-cache sizing flags shared by every command that runs the engine.

use clap::Args;
use hearth_backends::CpuOptions;
use hearth_engine::EngineConfig;
use hearth_models::ArchConfig;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// KV cache size, e.g. `512MiB`, `2GiB` or bytes. Default: room for 64k tokens (at least the
    /// model's context), capped at a quarter of the available memory.
    #[arg(long, env = "HEARTH_KV_CACHE_MEMORY", value_parser = parse_bytes)]
    pub kv_cache_memory: Option<usize>,
    /// Most tokens in one engine step (prefill chunks fill what decodes leave).
    #[arg(long, env = "HEARTH_MAX_BATCH_TOKENS", default_value_t = 2048)]
    pub max_batch_tokens: usize,
    /// Most sequences in one engine step.
    #[arg(long, env = "HEARTH_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Most queued requests; more are refused at once.
    #[arg(long, env = "HEARTH_MAX_WAITING", default_value_t = 1024)]
    pub max_waiting: usize,
}

/// `123`, `64KiB`, `512MiB`, `2GiB` (also `KB/MB/GB` as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (try 512MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => return Err(format!("unknown unit `{other}` in `{s}`")),
    };
    Ok((n * mult) as usize)
}

/// Bytes the machine can still give (`MemAvailable`), if known.
fn mem_available() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Default KV budget: 64k tokens (or the context, if longer), at most a quarter of free memory.
pub fn default_kv_bytes(per_token: usize, context: usize, available: Option<usize>) -> usize {
    let want = per_token * context.max(65_536);
    available.map_or(want, |a| want.min(a / 4)).max(per_token * 1024)
}

impl EngineArgs {
    pub fn cpu_options(&self, cfg: &ArchConfig) -> CpuOptions {
        let per_token = cfg.kv_spec().bytes_per_token(2);
        let kv =
            self.kv_cache_memory.unwrap_or_else(|| default_kv_bytes(per_token, cfg.context_length(), mem_available()));
        tracing::info!(
            bytes = kv,
            tokens = kv / per_token,
            per_token,
            "KV cache budget{}",
            if self.kv_cache_memory.is_none() { " (default)" } else { "" }
        );
        CpuOptions { kv_cache_bytes: kv, max_batch_tokens: self.max_batch_tokens, ..CpuOptions::default() }
    }

    /// Engine limits, with the tokens that end generation (the tokenizer's; none for dummy weights).
    pub fn engine_config(&self, eog_tokens: Vec<u32>) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_num_seqs: self.max_num_seqs,
            max_waiting: self.max_waiting,
            eog_tokens,
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn default_kv_budget_respects_memory() {
        assert_eq!(default_kv_bytes(100, 1000, None), 100 * 65_536);
        assert_eq!(default_kv_bytes(100, 100_000, None), 100 * 100_000);
        assert_eq!(default_kv_bytes(100, 1000, Some(4_000_000)), 1_000_000);
        assert_eq!(default_kv_bytes(100, 1000, Some(0)), 100 * 1024, "never below 1k tokens");
    }
}
