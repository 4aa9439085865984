//! GPT-2's tokenizer as Hugging Face stores it (`vocab.json`, `merges.txt`, `tokenizer_config.json`), derived from
//! tiktoken's r50k_base ranks, so an exported model folder loads with `AutoTokenizer.from_pretrained(dir)`.
//!
//! - `vocab.json`: every token's bytes through GPT-2's byte-to-unicode table (`Ġ` for a space), mapped to its id.
//! - `merges.txt`: token 256 + i is merge i (r50k's ranks are the merge order). The pair is what byte-pair merging of
//!   the token's bytes with the lower ranks alone ends at: exactly two tokens (checked).

use std::collections::HashMap;

use crate::tokenizer::TokenizerKind;

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the other 68 become U+0100 onwards.
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            next += 1;
            char::from_u32(255 + next).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

/// The GPT-2 vocabulary as HF writes it: `(token string, id)` in id order, `<|endoftext|>` last.
pub fn gpt2_vocab() -> Vec<(String, u32)> {
    let bpe = TokenizerKind::Gpt2.bpe();
    let table = byte_to_unicode();
    let eot = TokenizerKind::Gpt2.eot();
    (0..eot)
        .map(|id| {
            let bytes = bpe.decode_bytes(&[id]).expect("every r50k id below EOT has bytes");
            (bytes.iter().map(|&b| table[b as usize]).collect(), id)
        })
        .chain(std::iter::once(("<|endoftext|>".to_string(), eot)))
        .collect()
}

/// The merges, in rank order, as `(left, right)` token strings.
pub fn gpt2_merges() -> Vec<(String, String)> {
    let bpe = TokenizerKind::Gpt2.bpe();
    let table = byte_to_unicode();
    let show = |bytes: &[u8]| bytes.iter().map(|&b| table[b as usize]).collect::<String>();
    let mut ranks: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut merges = Vec::new();
    for id in 0..TokenizerKind::Gpt2.eot() {
        let bytes = bpe.decode_bytes(&[id]).expect("every r50k id below EOT has bytes");
        if bytes.len() > 1 {
            let parts = merge_with(&bytes, &ranks);
            assert_eq!(parts.len(), 2, "r50k token {id} is not one merge of two earlier tokens");
            merges.push((show(&parts[0]), show(&parts[1])));
        }
        ranks.insert(bytes, id);
    }
    merges
}

/// Byte-pair merging of `bytes` with `ranks`: merge the adjacent pair whose join has the lowest rank until none has
/// one.
fn merge_with(bytes: &[u8], ranks: &HashMap<Vec<u8>, u32>) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).collect();
    loop {
        let best = (0..parts.len().saturating_sub(1))
            .filter_map(|i| ranks.get(&[parts[i].as_slice(), parts[i + 1].as_slice()].concat()).map(|&r| (r, i)))
            .min();
        let Some((_, i)) = best else { return parts };
        let right = parts.remove(i + 1);
        parts[i].extend(right);
    }
}

/// The three files, ready to write: `vocab.json`, `merges.txt`, `tokenizer_config.json` (`model_max_length` =
/// the model's context).
pub fn gpt2_hf_files(model_max_length: usize) -> Vec<(&'static str, Vec<u8>)> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        gpt2_vocab().into_iter().map(|(s, id)| (s, serde_json::Value::from(id))).collect();
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in gpt2_merges() {
        merges.push_str(&format!("{a} {b}\n"));
    }
    let eot = "<|endoftext|>";
    let config = serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "add_prefix_space": false,
    });
    vec![
        ("vocab.json", serde_json::to_vec(&vocab).expect("vocab serialises")),
        ("merges.txt", merges.into_bytes()),
        ("tokenizer_config.json", serde_json::to_vec_pretty(&config).expect("config serialises")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_and_merges_are_gpt2s() {
        let vocab: HashMap<String, u32> = gpt2_vocab().into_iter().collect();
        assert_eq!(vocab.len(), 50257);
        assert_eq!((vocab["Ġthe"], vocab["<|endoftext|>"], vocab["!"]), (262, 50256, 0));
        let merges = gpt2_merges();
        assert_eq!(merges.len(), 50000);
        let first: Vec<String> = merges[..7].iter().map(|(a, b)| format!("{a} {b}")).collect();
        assert_eq!(first, ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"], "GPT-2's merges.txt begins so");
    }

    /// HF's byte-level BPE (lowest-ranked merge first) over these files encodes as tiktoken does.
    #[test]
    fn hf_style_bpe_over_the_files_matches_tiktoken() {
        let vocab: HashMap<String, u32> = gpt2_vocab().into_iter().collect();
        let rank: HashMap<(String, String), usize> =
            gpt2_merges().into_iter().enumerate().map(|(i, p)| (p, i)).collect();
        let table = byte_to_unicode();
        let tok = crate::tokenizer::Tokenizer::gpt2();
        let text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: Rough winds do \
                    shake the darling buds of May, And summer's lease hath all too short a date; antidisestablishment";
        for word in text.split_whitespace().filter(|w| w.chars().all(|c| c.is_ascii_alphabetic())) {
            let piece = format!(" {word}");
            let mut parts: Vec<String> = piece.bytes().map(|b| table[b as usize].to_string()).collect();
            while let Some((_, i)) = (0..parts.len().saturating_sub(1))
                .filter_map(|i| rank.get(&(parts[i].clone(), parts[i + 1].clone())).map(|&r| (r, i)))
                .min()
            {
                let right = parts.remove(i + 1);
                parts[i].push_str(&right);
            }
            let ids: Vec<u32> = parts.iter().map(|p| vocab[p]).collect();
            assert_eq!(ids, tok.encode(&piece).unwrap(), "{piece:?}");
        }
    }
}
