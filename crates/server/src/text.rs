//! Token ids to streamed text: incremental detokenization and stop strings.
//!
//! [`TextStream`] follows text-generation-inference's `decode_token`: it decodes a short window
//! of recent ids twice (with and without the newest ones) and emits the difference, so decoders
//! that treat the first token specially (a leading-space strip) give the same text as decoding the
//! whole output, each step costs O(window), and a byte-fallback sequence that does not yet form a
//! whole UTF-8 character (the decoder renders it as U+FFFD) is held back until it does.
//!
//! [`StopMatcher`] holds back the longest tail of the text that could begin a stop string, so a
//! stop string spanning several tokens is caught before any of it is sent, and the text before it
//! is exact. The stop string itself is never emitted (vLLM's default).

/// Decodes token ids to text (the model's tokenizer; a fake in tests).
pub trait Detokenize {
    fn decode(&self, ids: &[u32]) -> String;
}

impl Detokenize for hearth_models::Tokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        // Decoding ids the model produced cannot fail short of a bug in the tokenizer; render the
        // failure as text rather than dropping the stream.
        hearth_models::Tokenizer::decode(self, ids, true).unwrap_or_else(|e| format!("\u{FFFD}[{e}]"))
    }
}

/// Incremental detokenizer of one generation.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// Ids before this have been emitted as text.
    read: usize,
}

impl TextStream {
    /// Adds a token; returns the text that became final (possibly empty).
    pub fn push(&mut self, tok: &dyn Detokenize, id: u32) -> String {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let now = tok.decode(&self.ids[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return String::new();
        }
        let delta = delta(&before, &now);
        self.prefix = self.read;
        self.read = self.ids.len();
        delta
    }

    /// The text of tokens still held back (an incomplete character at the end of generation,
    /// rendered with U+FFFD).
    pub fn flush(&mut self, tok: &dyn Detokenize) -> String {
        if self.read == self.ids.len() {
            return String::new();
        }
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let now = tok.decode(&self.ids[self.prefix..]);
        self.prefix = self.read;
        self.read = self.ids.len();
        delta(&before, &now)
    }
}

/// What `now` adds to `before`. When the decoder rewrote earlier text (rare normalizations), what
/// follows `before`'s length in characters, rather than repeat or lose text.
fn delta(before: &str, now: &str) -> String {
    match now.strip_prefix(before) {
        Some(d) => d.to_string(),
        None => now.chars().skip(before.chars().count()).collect(),
    }
}

/// Finds stop strings in streamed text.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted (it might begin a stop string).
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Adds text; returns the text safe to emit and, if a stop string appeared, which one (the
    /// returned text then ends right before it, and the stream is over).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.pending.push_str(text);
        let first =
            self.stops.iter().filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s))).min_by_key(|m| m.0);
        if let Some((at, stop)) = first {
            let out = self.pending[..at].to_string();
            let stop = stop.clone();
            self.pending.clear();
            return (out, Some(stop));
        }
        let hold = self.held_tail();
        let out = self.pending[..self.pending.len() - hold].to_string();
        self.pending.drain(..self.pending.len() - hold);
        (out, None)
    }

    /// Generation ended without a stop string: the held text is final.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Bytes at the end of `pending` that are a proper prefix of some stop string (the longest).
    fn held_tail(&self) -> usize {
        let p = &self.pending;
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        (1..longest.min(p.len() + 1))
            .rev()
            .find(|&k| p.is_char_boundary(p.len() - k) && self.stops.iter().any(|s| s.starts_with(&p[p.len() - k..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each id is one byte; decoding is lossy UTF-8 (like byte-fallback tokens).
    struct Bytes;
    impl Detokenize for Bytes {
        fn decode(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
        }
    }

    fn stream(text: &str) -> Vec<String> {
        let mut s = TextStream::default();
        let mut out: Vec<String> = text.bytes().map(|b| s.push(&Bytes, b as u32)).collect();
        out.push(s.flush(&Bytes));
        out
    }

    #[test]
    fn never_splits_a_character() {
        let text = "héllo wörld — 日本語 🙂!";
        let parts = stream(text);
        assert_eq!(parts.concat(), text);
        for p in &parts {
            assert!(!p.contains('\u{FFFD}'), "{p:?}");
        }
        // The 4-byte emoji comes out whole, on its last byte.
        assert!(parts.contains(&"🙂".to_string()));
    }

    #[test]
    fn an_incomplete_character_at_the_end_is_flushed_as_replacement() {
        let mut s = TextStream::default();
        assert_eq!(s.push(&Bytes, b'a' as u32), "a");
        assert_eq!(s.push(&Bytes, 0xF0), "");
        assert_eq!(s.flush(&Bytes), "\u{FFFD}");
    }

    fn run_stops(pieces: &[&str], stops: &[&str]) -> (String, Option<String>, Vec<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        let mut emitted = Vec::new();
        for p in pieces {
            let (t, stop) = m.push(p);
            emitted.push(t.clone());
            out.push_str(&t);
            if stop.is_some() {
                return (out, stop, emitted);
            }
        }
        out.push_str(&m.finish());
        (out, None, emitted)
    }

    #[test]
    fn stop_string_spanning_tokens_is_not_emitted() {
        let (text, stop, emitted) = run_stops(&["Hello", " wor", "ld", "\n\n", "User", ":", " more"], &["\nUser:"]);
        assert_eq!(text, "Hello world\n");
        assert_eq!(stop.as_deref(), Some("\nUser:"));
        // "\n\n" could begin the stop string: held until "User:" decided it.
        assert_eq!(emitted[3], "\n");
    }

    #[test]
    fn a_false_start_is_released() {
        let (text, stop, emitted) = run_stops(&["a", "EN", "x", "END"], &["END"]);
        assert_eq!((text.as_str(), stop.as_deref()), ("aENx", Some("END")));
        assert_eq!(emitted[1], "", "\"EN\" might begin END");
        assert_eq!(emitted[2], "ENx");
    }

    #[test]
    fn earliest_stop_wins_and_no_stop_flushes_everything() {
        let (text, stop, _) = run_stops(&["one two three"], &["three", "two"]);
        assert_eq!((text.as_str(), stop.as_deref()), ("one ", Some("two")));
        let (text, stop, _) = run_stops(&["ab", "c", "St"], &["Stop"]);
        assert_eq!((text.as_str(), stop), ("abcSt", None));
        let (text, stop, _) = run_stops(&["ab"], &[]);
        assert_eq!((text.as_str(), stop), ("ab", None));
    }

    #[test]
    fn multibyte_stop_strings_hold_on_char_boundaries() {
        let (text, stop, _) = run_stops(&["x", "日", "本", "語"], &["本語"]);
        assert_eq!((text.as_str(), stop.as_deref()), ("x日", Some("本語")));
    }
}
