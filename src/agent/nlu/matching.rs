//! Matching a message against what the shop offers: option values ("blue", "M", "high-back"),
//! product names ("boots" ~ "Hiking Boots") and the items of one order ("the second one", "the
//! blue shirt", "everything"). Word-level and tolerant of plurals, hyphens and one-letter typos.
//! It is given the candidates; it never looks anything up.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::entities::edit_distance;

/// Which items of an order a message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemChoice {
    /// "all", "everything", "the whole order".
    All,
    /// These indexes into the items, ascending.
    Some(Vec<usize>),
    /// Nothing, or more than one thing, fits.
    Unclear,
}

/// Lower-cased word tokens: apostrophes dropped, hyphens inside words joined ("t-shirt" →
/// "tshirt"), decimals kept ("10.5").
fn words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        if c.is_alphanumeric() {
            cur.push(c);
        } else if matches!(c, '\'' | '’' | '-')
            && prev.is_some_and(char::is_alphanumeric)
            && next.is_some_and(char::is_alphanumeric)
        {
            // joined
        } else if c == '.'
            && prev.is_some_and(|p| p.is_ascii_digit())
            && next.is_some_and(|n| n.is_ascii_digit())
        {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A crude English singular: "boots" → "boot", "dresses" → "dress", "batteries" → "battery".
fn singular(w: &str) -> String {
    let n = w.chars().count();
    if n <= 3 || w.chars().any(|c| c.is_ascii_digit()) {
        return w.to_string();
    }
    if let Some(stem) = w.strip_suffix("ies").filter(|_| n > 4) {
        return format!("{stem}y");
    }
    for suf in ["sses", "shes", "ches", "xes", "zes"] {
        if w.ends_with(suf) {
            return w[..w.len() - 2].to_string();
        }
    }
    if w.ends_with("ss") || w.ends_with("us") || w.ends_with("is") {
        return w.to_string();
    }
    match w.strip_suffix('s') {
        Some(stem) => stem.to_string(),
        None => w.to_string(),
    }
}

fn same_word(a: &str, b: &str) -> bool {
    a == b || singular(a) == singular(b)
}

/// Where the phrase `value` (already tokenised) occurs in `text`: (start, end) token spans,
/// comparing the words run together so that spacing and hyphens do not matter ("high back" ~
/// "high-back", "full-grain leather" ~ "full grain leather"), the last word plural-tolerant.
fn phrase_spans(text: &[String], value: &[String]) -> Vec<(usize, usize)> {
    let want: String = value.concat();
    let mut spans = Vec::new();
    if want.is_empty() {
        return spans;
    }
    for s in 0..text.len() {
        let mut acc = String::new();
        for (e, w) in text.iter().enumerate().skip(s) {
            acc.push_str(w);
            if acc.len() >= want.len() {
                if same_word(&acc, &want) {
                    spans.push((s, e + 1));
                }
                break;
            }
            if !want.starts_with(acc.as_str()) {
                break;
            }
        }
    }
    spans
}

/// Other ways of writing a size value.
fn aliases(value: &str) -> Vec<&'static str> {
    match value.trim().to_lowercase().as_str() {
        "xs" => vec!["extra small", "xsmall"],
        "s" => vec!["small"],
        "m" => vec!["medium", "med"],
        "l" => vec!["large"],
        "xl" => vec!["extra large", "xlarge"],
        "xxl" | "2xl" => vec!["extra extra large", "xxlarge", "2xl", "xxl"],
        "small" => vec!["s"],
        "medium" => vec!["m"],
        "large" => vec!["l"],
        _ => Vec::new(),
    }
}

const TARGET_CUES: &[&str] = &[
    "for", "to", "into", "want", "need", "prefer", "like", "get", "in", "with",
];
const SOURCE_CUES: &[&str] = &[
    "not", "from", "than", "dont", "no", "instead", "replace", "of",
];

/// Options mentioned for a product: the text's words against the option values the catalogue
/// offers ({"color": ["blue","red"], "size": ["S","M","L"]} → {"color": "blue", "size": "M"}).
/// Case-insensitive; one-letter sizes only as whole words; multi-word values as phrases. Where a
/// text names two values of one option, the one it asks for wins ("swap red for blue" → blue).
pub fn match_options(text: &str, offered: &[(String, Vec<String>)]) -> Map<String, Value> {
    let t = words(text);
    let mut out = Map::new();
    for (name, values) in offered {
        // (score, value length in tokens, position, value)
        let mut best: Option<(i32, usize, usize, &String)> = None;
        for value in values {
            let mut forms: Vec<Vec<String>> = vec![words(value)];
            if name.to_lowercase().contains("size") || value.chars().count() <= 3 {
                forms.extend(aliases(value).into_iter().map(words));
            }
            for form in &forms {
                for (s, e) in phrase_spans(&t, form) {
                    // The nearest cue among the three words before decides.
                    let before = &t[s.saturating_sub(3)..s];
                    let score = before
                        .iter()
                        .rev()
                        .find_map(|w| {
                            if TARGET_CUES.contains(&w.as_str()) {
                                Some(1)
                            } else if SOURCE_CUES.contains(&w.as_str()) {
                                Some(-2)
                            } else {
                                None
                            }
                        })
                        .unwrap_or(0);
                    let cand = (score, e - s, s, value);
                    let better = match &best {
                        None => true,
                        Some(b) => (cand.0, cand.1, cand.2) > (b.0, b.1, b.2),
                    };
                    if better {
                        best = Some(cand);
                    }
                }
            }
        }
        if let Some((score, _, _, value)) = best
            && score >= 0
        {
            out.insert(name.clone(), Value::String(value.clone()));
        }
    }
    out
}

const NAME_STOPWORDS: &[&str] = &[
    "the", "and", "of", "with", "for", "a", "an", "in", "by", "&", "to", "on",
];

/// The text side of name matching: its words, their singulars, and adjacent pairs joined.
struct TextWords {
    list: Vec<String>,
    set: HashSet<String>,
    /// Singulars of words that were plural in the text.
    plural: HashSet<String>,
}

impl TextWords {
    fn new(text: &str) -> TextWords {
        let list = words(text);
        let mut set = HashSet::new();
        let mut plural = HashSet::new();
        for (i, w) in list.iter().enumerate() {
            let s = singular(w);
            if s != *w {
                plural.insert(s.clone());
            }
            set.insert(w.clone());
            set.insert(s);
            if let Some(n) = list.get(i + 1) {
                let joined = format!("{w}{n}");
                set.insert(singular(&joined));
                if singular(&joined) != joined {
                    plural.insert(singular(&joined));
                }
                set.insert(joined);
            }
        }
        TextWords { list, set, plural }
    }

    /// How well the name word `w` (singular) is present: 1 exact, 0.7 as a compound's head
    /// ("shirt" for "tshirt"), 0.8 with one typo; with whether the text said it in the plural.
    fn credit(&self, w: &str) -> (f32, bool) {
        if self.set.contains(w) {
            return (1.0, self.plural.contains(w));
        }
        let n = w.chars().count();
        let mut best = (0.0f32, false);
        for t in &self.list {
            let s = singular(t);
            let tn = s.chars().count();
            if tn >= 4 && n > tn && w.ends_with(s.as_str()) && best.0 < 0.7 {
                best = (0.7, s != *t);
            }
            if n >= 5
                && tn >= 4
                && s.chars().next() == w.chars().next()
                && edit_distance(&s, w) == 1
                && best.0 < 0.8
            {
                best = (0.8, s != *t);
            }
        }
        best
    }
}

/// A name as weighted words (singular, stopwords dropped).
fn name_words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(name) {
        if NAME_STOPWORDS.contains(&w.as_str()) {
            continue;
        }
        let s = singular(&w);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Scores of `names` against `tw`: (score 0..1, matched name words, any said in the plural).
fn score_names(tw: &TextWords, names: &[String]) -> Vec<(f32, Vec<String>, bool)> {
    let tokenised: Vec<Vec<String>> = names.iter().map(|n| name_words(n)).collect();
    let count = tokenised.len().max(1) as f32;
    let df = |w: &str| {
        tokenised
            .iter()
            .filter(|n| n.iter().any(|x| x == w))
            .count()
            .max(1) as f32
    };
    tokenised
        .iter()
        .map(|nw| {
            let mut total = 0.0;
            let mut got = 0.0;
            let mut matched = Vec::new();
            let mut plural = false;
            for w in nw {
                // Rarer words weigh more; one-letter words ("t" of "t shirt") barely count.
                let mut weight = (1.0 + count / df(w)).ln() + 0.1;
                if w.chars().count() <= 1 {
                    weight *= 0.2;
                }
                total += weight;
                let (c, p) = tw.credit(w);
                if c > 0.0 {
                    got += weight * c;
                    matched.push(w.clone());
                    plural |= p;
                }
            }
            let score = if total > 0.0 { got / total } else { 0.0 };
            // A match on one-letter words alone is no match.
            if matched.iter().all(|w| w.chars().count() <= 1) {
                (0.0, Vec::new(), false)
            } else {
                (score, matched, plural)
            }
        })
        .collect()
}

/// Which products a text names: each catalogue name (append the product type to it to match
/// types too) scored against the text's words, plural/singular, hyphen and typo tolerant ("boots"
/// ~ "Hiking Boots", "t-shirts" ~ "T-Shirt"). Product ids with a score above zero, best first.
pub fn match_products(text: &str, products: &[(String, String)]) -> Vec<(String, f32)> {
    let tw = TextWords::new(text);
    let names: Vec<String> = products.iter().map(|(_, n)| n.clone()).collect();
    let scores = score_names(&tw, &names);
    let mut out: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0.0)
        .map(|(i, s)| (i, s.0))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.into_iter()
        .map(|(i, s)| (products[i].0.clone(), s))
        .collect()
}

const ORDINALS: &[(&str, usize)] = &[
    ("first", 1),
    ("1st", 1),
    ("second", 2),
    ("2nd", 2),
    ("third", 3),
    ("3rd", 3),
    ("fourth", 4),
    ("4th", 4),
    ("fifth", 5),
    ("5th", 5),
    ("sixth", 6),
    ("6th", 6),
    ("seventh", 7),
    ("7th", 7),
    ("eighth", 8),
    ("8th", 8),
    ("ninth", 9),
    ("9th", 9),
    ("tenth", 10),
    ("10th", 10),
];

/// Words after an ordinal that show it is not about items ("my first order", "last week").
const NOT_ITEM_AFTER: &[&str] = &[
    "order", "orders", "time", "times", "week", "month", "year", "night", "purchase", "day", "of",
    "thing", "name", "monday", "friday", "weekend",
];

/// Which items of an order the shopper means: by product name words, option words, ordinal ("the
/// first one", "second item", "item 2", "the last one"), or "all"/"everything". `items` are
/// (name, options text such as "color: blue, size: M").
pub fn match_items(text: &str, items: &[(String, String)]) -> ItemChoice {
    if items.is_empty() {
        return ItemChoice::Unclear;
    }
    let t = words(text);
    let at = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    let n = items.len();

    // Ordinals.
    let mut picked: Vec<usize> = Vec::new();
    let mut out_of_range = false;
    for i in 0..t.len() {
        let w = at(i);
        let next = at(i + 1);
        let mut idx = None;
        if let Some((_, k)) = ORDINALS.iter().find(|(o, _)| *o == w) {
            if !NOT_ITEM_AFTER.contains(&next) && (w != "first" || !matches!(next, "i" | "things"))
            {
                idx = Some(*k);
            }
        } else if w == "last"
            && !NOT_ITEM_AFTER.contains(&next)
            && i > 0
            && matches!(at(i - 1), "the" | "and" | "only")
        {
            idx = Some(n);
        } else if matches!(w, "item" | "line" | "number" | "no" | "product")
            && let Ok(k) = next.parse::<usize>()
        {
            idx = Some(k);
        }
        if let Some(k) = idx {
            if (1..=n).contains(&k) {
                picked.push(k - 1);
            } else {
                out_of_range = true;
            }
        }
    }
    if out_of_range {
        return ItemChoice::Unclear;
    }
    if !picked.is_empty() {
        picked.sort_unstable();
        picked.dedup();
        return ItemChoice::Some(picked);
    }

    let says_all = (0..t.len()).any(|i| {
        let w = at(i);
        let negated = i > 0 && matches!(at(i - 1), "not" | "nt");
        !negated
            && (matches!(
                w,
                "everything" | "both" | "every" | "each" | "entire" | "whole"
            ) || (w == "all" && !(i > 0 && matches!(at(i - 1), "thats" | "is" | "its"))))
    });

    // Names and option values.
    let tw = TextWords::new(text);
    let names: Vec<String> = items.iter().map(|(name, _)| name.clone()).collect();
    let name_scores = score_names(&tw, &names);
    let option_hits: Vec<usize> = items
        .iter()
        .map(|(_, opts)| {
            option_values(opts)
                .iter()
                .filter(|v| !phrase_spans(&t, &words(v)).is_empty())
                .count()
        })
        .collect();
    // Group identical names; within a group, option words choose.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = name_words(name).join(" ");
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    // (group, name score, matched words, plural, chosen members, ambiguous)
    let mut hits: Vec<(f32, Vec<String>, bool, Vec<usize>)> = Vec::new();
    for (_, members) in &groups {
        let (score, matched, plural) = name_scores[members[0]].clone();
        let best_opts = members.iter().map(|&m| option_hits[m]).max().unwrap_or(0);
        if score <= 0.0 && best_opts == 0 {
            continue;
        }
        let chosen: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| option_hits[m] == best_opts)
            .collect();
        hits.push((score + 0.01 * best_opts as f32, matched, plural, chosen));
    }
    if hits.is_empty() {
        if says_all {
            return ItemChoice::All;
        }
        let refers = t.iter().any(|w| {
            matches!(
                w.as_str(),
                "it" | "item" | "this" | "that" | "one" | "order" | "product" | "them"
            )
        });
        return if n == 1 && refers {
            ItemChoice::Some(vec![0])
        } else {
            ItemChoice::Unclear
        };
    }
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Keep a weaker product only if it explains words the stronger ones do not
    // ("water bottle" names the bottle, not also the water filter).
    let mut explained: HashSet<String> = HashSet::new();
    let mut chosen: Vec<usize> = Vec::new();
    let option_only = hits.iter().all(|h| h.1.is_empty());
    for (k, (_, matched, plural, members)) in hits.iter().enumerate() {
        let new_words = matched.iter().any(|w| !explained.contains(w));
        if k > 0 && !new_words && !option_only {
            continue;
        }
        if option_only && k > 0 {
            // Option words alone ("the blue one") must single out one product.
            return if says_all {
                ItemChoice::All
            } else {
                ItemChoice::Unclear
            };
        }
        explained.extend(matched.iter().cloned());
        if members.len() > 1 && !(*plural || says_all) {
            return ItemChoice::Unclear;
        }
        chosen.extend(members.iter().copied());
    }
    chosen.sort_unstable();
    chosen.dedup();
    if says_all && chosen.len() == n {
        return ItemChoice::All;
    }
    ItemChoice::Some(chosen)
}

/// The values of an options text: "color: blue, size: M" → ["blue", "M"]; "blue, M" → the same.
fn option_values(options: &str) -> Vec<String> {
    options
        .split([',', ';', '/'])
        .map(|part| {
            part.rsplit_once(':')
                .map(|(_, v)| v)
                .unwrap_or(part)
                .trim()
                .to_string()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(n, vs)| (n.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    fn items(spec: &[(&str, &str)]) -> Vec<(String, String)> {
        spec.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn options_by_word_phrase_and_alias() {
        let o = offered(&[
            ("color", &["blue", "red", "light blue"]),
            ("size", &["S", "M", "L", "XL"]),
        ]);
        let m = match_options("the Blue t-shirt in M", &o);
        assert_eq!(m.get("color"), Some(&Value::from("blue")));
        assert_eq!(m.get("size"), Some(&Value::from("M")));
        let m = match_options("I'd like it in light blue, size large", &o);
        assert_eq!(m.get("color"), Some(&Value::from("light blue")));
        assert_eq!(m.get("size"), Some(&Value::from("L")));
        // One-letter sizes only as whole words: "I'm", "shirts", "Ms" are not sizes.
        let m = match_options("I'm after shirts for Ms Lee", &o);
        assert!(m.is_empty(), "{m:?}");
        // The asked-for value wins over the one being replaced.
        let m = match_options("swap the red one for blue, from M to XL", &o);
        assert_eq!(m.get("color"), Some(&Value::from("blue")));
        assert_eq!(m.get("size"), Some(&Value::from("XL")));
        let m = match_options("not red", &o);
        assert!(m.get("color").is_none());
    }

    #[test]
    fn options_multiword_and_numbers() {
        let o = offered(&[
            ("backrest height", &["high-back", "standard"]),
            ("size", &["9", "10", "10.5"]),
            ("material", &["full grain leather", "synthetic"]),
        ]);
        let m = match_options("the high back one in size 10.5, full-grain leather", &o);
        assert_eq!(m.get("backrest height"), Some(&Value::from("high-back")));
        assert_eq!(m.get("size"), Some(&Value::from("10.5")));
        assert_eq!(m.get("material"), Some(&Value::from("full grain leather")));
        let m = match_options("hiking boots size 10", &o);
        assert_eq!(m.get("size"), Some(&Value::from("10")));
    }

    #[test]
    fn products_plural_hyphen_typo() {
        let p: Vec<(String, String)> = [
            ("p1", "Hiking Boots"),
            ("p2", "T-Shirt"),
            ("p3", "Water Bottle"),
            ("p4", "Camping Tent"),
            ("p5", "Running Shoes"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(match_products("I want to return the boots", &p)[0].0, "p1");
        assert_eq!(match_products("two t-shirts please", &p)[0].0, "p2");
        assert_eq!(match_products("my tshirt", &p)[0].0, "p2");
        assert_eq!(match_products("the t shirt", &p)[0].0, "p2");
        assert_eq!(match_products("the shirt", &p)[0].0, "p2");
        assert_eq!(match_products("a bottel of water", &p)[0].0, "p3");
        let r = match_products("do you have the tent in green?", &p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "p4");
        let r = match_products("hiking boots size 10", &p);
        assert!((r[0].1 - 1.0).abs() < 1e-6, "{r:?}");
        assert!(match_products("hello there", &p).is_empty());
        assert!(match_products("", &p).is_empty());
        assert!(match_products("boots", &[]).is_empty());
    }

    #[test]
    fn items_by_ordinal_all_name_and_options() {
        let order = items(&[
            ("Hiking Boots", "color: brown, size: 10"),
            ("T-Shirt", "color: blue, size: M"),
            ("T-Shirt", "color: red, size: L"),
            ("Water Bottle", "capacity: 1L"),
        ]);
        assert_eq!(
            match_items("the first one", &order),
            ItemChoice::Some(vec![0])
        );
        assert_eq!(
            match_items("second item and the last one", &order),
            ItemChoice::Some(vec![1, 3])
        );
        assert_eq!(match_items("item 3", &order), ItemChoice::Some(vec![2]));
        assert_eq!(match_items("the fifth one", &order), ItemChoice::Unclear);
        assert_eq!(match_items("everything", &order), ItemChoice::All);
        assert_eq!(match_items("all of it please", &order), ItemChoice::All);
        assert_eq!(match_items("the boots", &order), ItemChoice::Some(vec![0]));
        assert_eq!(
            match_items("the blue shirt", &order),
            ItemChoice::Some(vec![1])
        );
        assert_eq!(
            match_items("the red t-shirt in L", &order),
            ItemChoice::Some(vec![2])
        );
        assert_eq!(
            match_items("the t-shirts", &order),
            ItemChoice::Some(vec![1, 2])
        );
        assert_eq!(
            match_items("both shirts", &order),
            ItemChoice::Some(vec![1, 2])
        );
        assert_eq!(match_items("the shirt", &order), ItemChoice::Unclear);
        assert_eq!(
            match_items("the boots and the water bottle", &order),
            ItemChoice::Some(vec![0, 3])
        );
        assert_eq!(
            match_items("the red one", &order),
            ItemChoice::Some(vec![2])
        );
        assert_eq!(
            match_items("in my first order I got", &order),
            ItemChoice::Unclear
        );
        assert_eq!(match_items("hmm", &order), ItemChoice::Unclear);
        let one = items(&[("Camping Tent", "color: green")]);
        assert_eq!(match_items("return it", &one), ItemChoice::Some(vec![0]));
        assert_eq!(match_items("the tent", &one), ItemChoice::Some(vec![0]));
        assert_eq!(match_items("anything", &[]), ItemChoice::Unclear);
    }
}
