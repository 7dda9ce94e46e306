//! Whether the brand's policy texts can answer a question at all: the question's content words
//! that appear nowhere in them ("Do you ship to Canada?" when no policy mentions Canada). The
//! closest policy section is then not an answer — the agent says the policies do not cover it
//! and offers a person, instead of quoting a section that only looks related and calling the
//! question resolved.

use std::collections::HashSet;

/// The words of the brand's policy texts (lowercased, with simple plural and verb endings
/// also stripped).
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    words: HashSet<String>,
}

/// Words a question is made of that say nothing about its subject: function words, the
/// phrasing of a request, and the words of any shop conversation.
const COMMON: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "also",
    "although",
    "always",
    "another",
    "anyone",
    "anything",
    "anyway",
    "anywhere",
    "around",
    "back",
    "because",
    "been",
    "before",
    "being",
    "below",
    "best",
    "better",
    "between",
    "both",
    "bought",
    "came",
    "cannot",
    "cant",
    "come",
    "could",
    "couldnt",
    "dear",
    "didnt",
    "does",
    "doesnt",
    "doing",
    "done",
    "dont",
    "down",
    "during",
    "each",
    "either",
    "else",
    "enough",
    "even",
    "ever",
    "every",
    "exactly",
    "find",
    "fine",
    "first",
    "from",
    "further",
    "getting",
    "give",
    "given",
    "going",
    "good",
    "great",
    "guys",
    "happen",
    "happens",
    "have",
    "having",
    "hello",
    "help",
    "here",
    "hey",
    "hiya",
    "however",
    "just",
    "kind",
    "know",
    "last",
    "less",
    "like",
    "likely",
    "little",
    "long",
    "look",
    "looking",
    "made",
    "make",
    "many",
    "maybe",
    "mean",
    "might",
    "mine",
    "more",
    "most",
    "much",
    "must",
    "need",
    "needs",
    "never",
    "next",
    "nice",
    "none",
    "normally",
    "nothing",
    "okay",
    "once",
    "only",
    "other",
    "others",
    "ours",
    "over",
    "own",
    "please",
    "possible",
    "pretty",
    "quick",
    "quickly",
    "quite",
    "rather",
    "really",
    "right",
    "said",
    "same",
    "says",
    "should",
    "since",
    "some",
    "someone",
    "something",
    "soon",
    "sorry",
    "still",
    "such",
    "sure",
    "take",
    "tell",
    "than",
    "thank",
    "thanks",
    "that",
    "thats",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "things",
    "think",
    "this",
    "those",
    "though",
    "through",
    "today",
    "together",
    "tomorrow",
    "very",
    "want",
    "wanted",
    "wants",
    "well",
    "were",
    "what",
    "whats",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "whom",
    "whose",
    "will",
    "wish",
    "with",
    "within",
    "without",
    "wondering",
    "wont",
    "would",
    "wouldnt",
    "yeah",
    "year",
    "years",
    "your",
    "yours",
    "yourself",
    "able",
    "allowed",
    "anybody",
    "currently",
    "already",
    "actually",
    "basically",
    "question",
    "questions",
    "regarding",
    "concerning",
    "info",
    "information",
    "policy",
    "policies",
    "store",
    "shop",
    "website",
    "site",
    "online",
    "company",
    "team",
    "support",
    "customer",
    "customers",
    "stuff",
    "usually",
    "generally",
    "offer",
    "offers",
    "provide",
    "provides",
    "accept",
    "accepts",
    "available",
    "option",
    "options",
    "cost",
    "costs",
];

/// Lowercased word tokens (letters and digits, apostrophes dropped).
fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|t| {
            t.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
}

/// A word and its forms without a plural or verb ending ("ships" → "ship", "shipping" →
/// "shipp", "ship").
fn forms(word: &str) -> Vec<String> {
    let mut out = vec![word.to_string()];
    for suffix in ["ies", "es", "s", "ing", "ed", "ly"] {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.chars().count() >= 3
        {
            out.push(stem.to_string());
            if suffix == "ies" {
                out.push(format!("{stem}y"));
            }
            // "shipping" → "shipp" → "ship".
            let chars: Vec<char> = stem.chars().collect();
            if chars.len() >= 4 && chars[chars.len() - 1] == chars[chars.len() - 2] {
                out.push(chars[..chars.len() - 1].iter().collect());
            }
        }
    }
    out
}

/// Whether `a` and `b` differ by at most one edit (a typo).
fn one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    if long.len() - short.len() > 1 {
        return false;
    }
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < short.len() && j < long.len() {
        if short[i] == long[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        if edits > 1 {
            return false;
        }
        if short.len() == long.len() {
            // A swap of two neighbours counts as one edit.
            if i + 1 < short.len() && short[i] == long[j + 1] && short[i + 1] == long[j] {
                i += 2;
                j += 2;
                continue;
            }
            i += 1;
        }
        j += 1;
    }
    edits + (long.len() - j) + (short.len() - i) <= 1
}

impl Vocabulary {
    /// The vocabulary of these texts (the policy sections and their headings).
    pub fn of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vocabulary {
        let mut words = HashSet::new();
        for t in texts {
            for w in tokens(t) {
                words.extend(forms(&w));
            }
        }
        Vocabulary { words }
    }

    fn knows(&self, word: &str) -> bool {
        if forms(word).iter().any(|f| self.words.contains(f)) {
            return true;
        }
        // A typo of a word the policies use ("retrun", "shiping").
        word.chars().count() >= 5 && self.words.iter().any(|w| one_edit(w, word))
    }

    /// The question's content words the texts never use, in the question's order: empty when
    /// every word of substance appears in them.
    pub fn uncovered(&self, question: &str) -> Vec<String> {
        if self.words.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for w in tokens(question) {
            if w.chars().count() < 4
                || w.chars().any(|c| c.is_ascii_digit())
                || COMMON.contains(&w.as_str())
                || self.knows(&w)
                || out.contains(&w)
            {
                continue;
            }
            out.push(w);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipping() -> Vocabulary {
        Vocabulary::of([
            "Shipping methods and delivery times",
            "We offer two shipping methods within the United States. Standard shipping arrives \
             3 to 7 business days after your order ships. Returns are accepted within 30 days.",
        ])
    }

    #[test]
    fn questions_about_what_the_policies_never_mention_are_uncovered() {
        let v = shipping();
        assert_eq!(v.uncovered("Do you ship to Canada?"), vec!["canada"]);
        assert_eq!(
            v.uncovered("Can I pay with PayPal or Klarna?"),
            vec!["paypal", "klarna"]
        );
        // Covered, whatever the phrasing, plurals, endings and typos.
        assert!(
            v.uncovered("How long does standard shipping take?")
                .is_empty()
        );
        assert!(v.uncovered("What are your shipping methods?").is_empty());
        assert!(
            v.uncovered("hey guys, how many days for delivery??")
                .is_empty()
        );
        assert!(v.uncovered("how many days to retrun an order").is_empty());
        assert!(v.uncovered("Do you ship within the states?").is_empty());
        // Nothing to compare with: nothing is said to be uncovered.
        assert!(
            Vocabulary::default()
                .uncovered("Do you ship to Canada?")
                .is_empty()
        );
    }

    #[test]
    fn one_edit_is_a_typo_and_two_are_not() {
        assert!(one_edit("return", "retrun"));
        assert!(one_edit("shipping", "shiping"));
        assert!(one_edit("refund", "refunds"));
        assert!(!one_edit("canada", "panama"));
        assert!(!one_edit("return", "turn"));
    }
}
