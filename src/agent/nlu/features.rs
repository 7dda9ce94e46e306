//! Text → features for the intent model: lower-cased word tokens with numbers, ids, money and
//! emails replaced by placeholder tokens, then word unigrams, word bigrams (with sentence-edge
//! markers) and character n-grams of the words (for typos). It knows nothing about intents.

/// How a text is turned into features; stored in the model file so a model is always read with
/// the featurization it was trained with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FeatureConfig {
    /// Character n-gram lengths, inclusive; `char_min == 0` turns them off.
    pub char_min: usize,
    pub char_max: usize,
    /// Weight of one character n-gram relative to a word feature.
    pub char_weight: f32,
    /// Weight of one word bigram relative to a word unigram; 0 turns them off.
    pub bigram_weight: f32,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            char_min: 3,
            char_max: 5,
            char_weight: 1.0,
            bigram_weight: 0.5,
        }
    }
}

/// Lower-cased tokens of `text` for classification. Apostrophes and in-word hyphens are dropped
/// ("don't" → "dont", "sign-up" → "signup"); `#…` ids and long numbers become `_id_`, short
/// numbers `_num_`, amounts `_money_`, emails `_email_`; `?` and `!` are kept as tokens.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in text.split_whitespace() {
        if is_email_chunk(chunk) {
            out.push("_email_".to_string());
            if let Some(p) = chunk.chars().last().filter(|c| matches!(c, '?' | '!')) {
                out.push(p.to_string());
            }
            continue;
        }
        lex_chunk(chunk, &mut out);
    }
    out
}

fn is_email_chunk(chunk: &str) -> bool {
    match chunk.split_once('@') {
        Some((local, domain)) => {
            let domain = domain.trim_end_matches(|c: char| !c.is_alphanumeric());
            !local.is_empty()
                && domain.contains('.')
                && domain
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

fn lex_chunk(chunk: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = chunk.chars().flat_map(char::to_lowercase).collect();
    let n = chars.len();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        if c.is_alphanumeric() {
            let hash = i > 0 && chars[i - 1] == '#';
            let dollar = i > 0 && matches!(chars[i - 1], '$' | '€' | '£');
            let mut word = String::new();
            let mut j = i;
            while j < n {
                let d = chars[j];
                if d.is_alphanumeric() {
                    word.push(d);
                    j += 1;
                } else if matches!(d, '\'' | '’' | '-')
                    && j + 1 < n
                    && chars[j + 1].is_alphanumeric()
                    && !word.is_empty()
                {
                    // Dropped: "don't" → "dont", "e-mail" → "email".
                    j += 1;
                } else if matches!(d, '.' | ',')
                    && j + 1 < n
                    && chars[j + 1].is_ascii_digit()
                    && word.chars().last().is_some_and(|l| l.is_ascii_digit())
                {
                    // Digit grouping or decimals stay in the number: "1,499.99".
                    j += 1;
                } else {
                    break;
                }
            }
            let money_after = j < n && matches!(chars[j], '$' | '€' | '£');
            out.push(placeholder(&word, hash, dollar || money_after));
            i = j;
        } else {
            if (c == '?' || c == '!') && out.last().is_none_or(|l| l.as_str() != c.to_string()) {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
}

fn placeholder(word: &str, hash: bool, money: bool) -> String {
    let digits = word.chars().filter(char::is_ascii_digit).count();
    if digits == 0 {
        return word.to_string();
    }
    if money {
        return "_money_".to_string();
    }
    if hash {
        return "_id_".to_string();
    }
    let letters = word.chars().count() - digits;
    if letters == 0 {
        return if digits >= 4 { "_id_" } else { "_num_" }.to_string();
    }
    if matches!(word, "1st" | "2nd" | "3rd") || (word.ends_with("th") && letters == 2) {
        return "_ord_".to_string();
    }
    if digits >= 3 { "_id_" } else { "_num_" }.to_string()
}

/// Calls `emit(feature, weight)` for every feature of `tokens` (duplicates possible; the model
/// merges them).
pub(crate) fn featurize(tokens: &[String], cfg: &FeatureConfig, mut emit: impl FnMut(&str, f32)) {
    let mut buf = String::new();
    for t in tokens {
        buf.clear();
        buf.push_str("w:");
        buf.push_str(t);
        emit(&buf, 1.0);
    }
    if cfg.bigram_weight > 0.0 {
        let mut prev = "<s>";
        for t in tokens
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("</s>"))
        {
            buf.clear();
            buf.push_str("b:");
            buf.push_str(prev);
            buf.push(' ');
            buf.push_str(t);
            emit(&buf, cfg.bigram_weight);
            prev = t;
        }
    }
    if cfg.char_min > 0 && cfg.char_max >= cfg.char_min {
        let mut padded: Vec<char> = Vec::new();
        for t in tokens {
            if t.starts_with('_') || !t.chars().next().is_some_and(char::is_alphabetic) {
                continue;
            }
            padded.clear();
            padded.push('<');
            padded.extend(t.chars());
            padded.push('>');
            for len in cfg.char_min..=cfg.char_max {
                if padded.len() < len {
                    break;
                }
                for win in padded.windows(len) {
                    buf.clear();
                    buf.push_str("c:");
                    buf.extend(win.iter());
                    emit(&buf, cfg.char_weight);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_punctuation() {
        assert_eq!(
            tokens("Where's order #W2611340?? I paid $12, email me: a.b@x.com!"),
            vec![
                "wheres", "order", "_id_", "?", "i", "paid", "_money_", "email", "me", "_email_",
                "!"
            ]
        );
        assert_eq!(
            tokens("purchase 00123842 size 10 2nd"),
            vec!["purchase", "_id_", "size", "_num_", "_ord_"]
        );
        assert_eq!(
            tokens("sign-up for the T-Shirt"),
            vec!["signup", "for", "the", "tshirt"]
        );
        assert_eq!(tokens("  "), Vec::<String>::new());
    }

    #[test]
    fn features_cover_words_bigrams_chars() {
        let mut got = Vec::new();
        let cfg = FeatureConfig {
            char_min: 3,
            char_max: 3,
            char_weight: 0.5,
            bigram_weight: 1.0,
        };
        featurize(&tokens("hi you"), &cfg, |f, w| got.push((f.to_string(), w)));
        let names: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "w:hi",
                "w:you",
                "b:<s> hi",
                "b:hi you",
                "b:you </s>",
                "c:<hi",
                "c:hi>",
                "c:<yo",
                "c:you",
                "c:ou>"
            ]
        );
    }
}
