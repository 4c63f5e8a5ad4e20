//! Tokenizers built with the `tokenizers` crate, either from GGUF metadata
//! (`tokenizer.ggml.*`) or from a Hugging Face `tokenizer.json`.
//!
//! GGUF BPE vocabularies ("gpt2" model) become a byte-level BPE whose pre-tokenizer is chosen
//! by `tokenizer.ggml.pre`, mirroring the regexes of llama.cpp's `llama-vocab.cpp`.
//! SentencePiece vocabularies ("llama" model, e.g. TinyLlama) become a byte-fallback BPE whose
//! merges are ranked by the pieces' scores, as HF's `LlamaConverter` does.
//! Control and user-defined tokens are special added tokens: they are matched in text (as
//! llama.cpp does with `parse_special`) and skipped when decoding for display.
use crate::gguf::{Gguf, Value};
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// Llama 3's ("llama-bpe" in GGUF).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's ("qwen2").
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a turn besides EOS (e.g. `<|eot_id|>`).
    pub extra_stops: Vec<u32>,
    pub add_bos: bool,
    pub vocab_size: usize,
}

fn err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("tokenizer: {e}")
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let kind = g.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = string_array(g, "tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let mut inner = match kind {
            "gpt2" => gpt2_bpe(g, &tokens)?,
            "llama" => sentencepiece_bpe(g, &tokens)?,
            other => bail!(
                "tokenizer model '{other}' is not supported (gpt2 BPE and llama SentencePiece are)"
            ),
        };
        // Control (3) and user-defined (4) tokens are matched whole in input text.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let eos = id("tokenizer.ggml.eos_token_id");
        let extra_stops: Vec<u32> = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        let extra_stops = end_of_turn_stops(&inner, eos, extra_stops);
        Ok(Tokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            extra_stops,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(kind == "llama"),
            vocab_size: tokens.len(),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS come from the caller's config.
    pub fn from_file(
        path: &Path,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let json = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Self::from_json_bytes(&json, bos, eos, add_bos)
            .map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// [`Tokenizer::from_file`] on the bytes of a `tokenizer.json`.
    pub fn from_json_bytes(
        json: &[u8],
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        // tokenizers 0.22 panics (an `expect` in its decoder's deserializer) on a syntax error
        // inside the "decoder" value, e.g. a file cut short there: check the syntax first.
        serde_json::from_slice::<serde_json::Value>(json)
            .map_err(|e| anyhow!("not valid JSON: {e}"))?;
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| anyhow!("{e}"))?;
        check_decoder(&inner)?;
        let vocab_size = inner.get_vocab_size(true);
        let extra_stops = end_of_turn_stops(&inner, eos, vec![]);
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            extra_stops,
            add_bos,
            vocab_size,
        })
    }

    /// Token ids of `text`; special-token text is matched. BOS is prepended when the model
    /// asks for it and `with_bos` is set.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos && self.add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(err)
    }

    /// Text of `ids` with special tokens kept (for debugging and templates).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(err)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.eos || self.extra_stops.contains(&id)
    }
}

/// Refuses decoders that tokenizers 0.22 cannot run without panicking: its `Strip` with a
/// `stop` count indexes before a token's start when the token has fewer characters to strip
/// (an empty one, or one made only of the stripped character). Real tokenizers strip from the
/// start only (SentencePiece's leading space).
fn check_decoder(inner: &tokenizers::Tokenizer) -> Result<()> {
    fn strips_from_the_end(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let strip = m.get("type").and_then(|t| t.as_str()) == Some("Strip");
                let stop = m.get("stop").and_then(|s| s.as_u64()).unwrap_or(0);
                (strip && stop > 0) || m.values().any(strips_from_the_end)
            }
            serde_json::Value::Array(a) => a.iter().any(strips_from_the_end),
            _ => false,
        }
    }
    let Some(d) = inner.get_decoder() else {
        return Ok(());
    };
    if strips_from_the_end(&serde_json::to_value(d)?) {
        bail!("a Strip decoder with a non-zero 'stop' is not supported");
    }
    Ok(())
}

/// Stop tokens besides EOS: those the metadata names plus the usual end-of-turn tokens the
/// vocabulary has, so chat models whose EOS differs from end-of-turn still stop at a turn's end.
fn end_of_turn_stops(
    inner: &tokenizers::Tokenizer,
    eos: Option<u32>,
    mut stops: Vec<u32>,
) -> Vec<u32> {
    for t in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
        stops.extend(inner.token_to_id(t));
    }
    stops.retain(|t| Some(*t) != eos);
    stops.sort_unstable();
    stops.dedup();
    stops
}

fn string_array(g: &Gguf, key: &str) -> Result<Vec<String>> {
    let a = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("metadata '{key}' is missing"))?;
    a.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("'{key}' holds a non-string"))
        })
        .collect()
}

fn gpt2_bpe(g: &Gguf, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = string_array(g, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| anyhow!("malformed merge '{m}'"))?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(err)?;
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(err)?
        .into())
    };
    let pre_tok: PreTokenizerWrapper = match pre {
        // GPT-2's regex is the one HF's ByteLevel applies with `use_regex`.
        "default" | "gpt2" | "gpt-2" => ByteLevel::new(false, true, true).into(),
        // SmolLM2, StarCoder: single digits split first, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![
            split(r"\p{N}")?,
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => Sequence::new(vec![
            split(LLAMA3_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        "qwen2" | "deepseek-r1-qwen" => Sequence::new(vec![
            split(QWEN2_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        other => {
            bail!("pre-tokenizer '{other}' is not supported (gpt2, smollm, llama-bpe, qwen2 are)")
        }
    };
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(pre_tok));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(t)
}

fn sentencepiece_bpe(g: &Gguf, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f64> = match g.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        _ => bail!("SentencePiece vocabulary without 'tokenizer.ggml.scores'"),
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Every split of a piece into two known pieces is a merge, ranked by the merged piece's
    // score (higher first), as in HF's SentencePieceExtractor.
    let mut merges: Vec<(f64, u32, u32, String, String)> = vec![];
    for (piece, &id) in &vocab {
        for (i, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(i);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                merges.push((
                    scores.get(id as usize).copied().unwrap_or(0.0),
                    ia,
                    ib,
                    a.into(),
                    b.into(),
                ));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let merges = merges.into_iter().map(|m| (m.3, m.4)).collect();
    let unk = match g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
    {
        None => None,
        Some(u) => Some(
            usize::try_from(u)
                .ok()
                .and_then(|u| tokens.get(u))
                .ok_or_else(|| {
                    anyhow!(
                        "tokenizer.ggml.unknown_token_id {u} is outside the vocabulary of {}",
                        tokens.len()
                    )
                })?
                .clone(),
        ),
    };
    let mut b = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        b = b.unk_token(u);
    }
    let bpe = b.build().map_err(err)?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    let add_space = g
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let scheme = if add_space {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    t.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    t.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        tokenizers::decoders::DecoderWrapper::Replace(Replace::new("▁", " ").map_err(err)?),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', usize::from(add_space), 0).into(),
    ]))));
    Ok(t)
}
