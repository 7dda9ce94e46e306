//! Entities in one shopper message, by hand-written rules over a small tokenizer: order numbers,
//! emails, ZIP codes, tracking numbers, names, yes/no, cancel reasons, payment hints and a US
//! street address. Best effort and context-free: it never looks anything up, and a value found
//! here is a claim the agent must still check against the store.

use serde::Serialize;

/// A US street address mentioned in a message; fields not found are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddressMention {
    pub address1: String,
    pub address2: String,
    pub city: String,
    /// Two-letter code, upper-case.
    pub state: String,
    pub zip: String,
}

/// Everything [`extract`] found in a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Entities {
    /// "#W2611340", "#1001", "#00123842": '#' + the id upper-cased.
    pub order_numbers: Vec<String>,
    /// Lower-cased.
    pub emails: Vec<String>,
    /// Five digits; ones said to be a ZIP (or in an address) first.
    pub zip_codes: Vec<String>,
    /// Upper-cased, as written without spaces.
    pub tracking_numbers: Vec<String>,
    /// (first, last).
    pub names: Vec<(String, String)>,
    /// An explicit confirmation ("yes", "sure, go ahead", "confirm").
    pub yes: bool,
    /// An explicit refusal ("no", "nope", "don't", "cancel that", "wait").
    pub no: bool,
    /// "no longer needed" | "ordered by mistake".
    pub reason: Option<String>,
    /// "gift card" | "original" | "paypal" | "credit card".
    pub payment_hint: Option<String>,
    pub address: Option<AddressMention>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Letters (with inner apostrophes or hyphens).
    Word,
    /// Digits only.
    Num,
    /// Letters and digits mixed ("W2611340", "5th", "4B").
    Alnum,
    /// One other visible character.
    Punct,
}

#[derive(Debug, Clone)]
struct Tok {
    start: usize,
    end: usize,
    kind: Kind,
    /// Lower-cased, apostrophes dropped.
    norm: String,
    /// Inside an email address (ignored by the other rules).
    in_email: bool,
}

/// Finds the entities in `text`.
pub fn extract(text: &str) -> Entities {
    let (emails, email_spans) = find_emails(text);
    let mut toks = lex(text);
    for t in toks.iter_mut() {
        t.in_email = email_spans
            .iter()
            .any(|(s, e)| t.start >= *s && t.end <= *e);
    }
    let numbers = classify_numbers(text, &toks);
    let address = find_address(text, &toks);
    let mut zip_codes: Vec<String> = Vec::new();
    if let Some(a) = &address {
        push_unique(&mut zip_codes, a.zip.clone());
    }
    for z in numbers.zips_near.iter().chain(numbers.zips_other.iter()) {
        push_unique(&mut zip_codes, z.clone());
    }
    let norm_words: Vec<&str> = toks
        .iter()
        .filter(|t| !t.in_email && t.kind != Kind::Punct)
        .map(|t| t.norm.as_str())
        .collect();
    let (yes, no) = yes_no(&toks);
    Entities {
        order_numbers: numbers.orders,
        emails,
        zip_codes,
        tracking_numbers: numbers.tracking,
        names: find_names(text, &toks),
        yes,
        no,
        reason: cancel_reason(&norm_words),
        payment_hint: payment_hint(&norm_words),
        address,
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !s.is_empty() && !v.contains(&s) {
        v.push(s);
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens and emails

fn lex(text: &str) -> Vec<Tok> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let end_of = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        if c.is_alphanumeric() {
            let start = i;
            let mut j = i;
            let (mut letters, mut digits) = (false, false);
            while j < n {
                let d = chars[j].1;
                if d.is_alphanumeric() {
                    letters |= !d.is_ascii_digit();
                    digits |= d.is_ascii_digit();
                    j += 1;
                } else if matches!(d, '\'' | '’' | '-')
                    && j + 1 < n
                    && chars[j + 1].1.is_alphabetic()
                    && !chars[j - 1].1.is_ascii_digit()
                {
                    j += 1;
                } else {
                    break;
                }
            }
            let s = &text[chars[start].0..end_of(j)];
            let norm: String = s
                .chars()
                .filter(|ch| !matches!(ch, '\'' | '’'))
                .flat_map(char::to_lowercase)
                .collect();
            let kind = match (letters, digits) {
                (true, true) => Kind::Alnum,
                (false, true) => Kind::Num,
                _ => Kind::Word,
            };
            out.push(Tok {
                start: chars[start].0,
                end: end_of(j),
                kind,
                norm,
                in_email: false,
            });
            i = j;
        } else {
            if !c.is_whitespace() {
                out.push(Tok {
                    start: chars[i].0,
                    end: end_of(i + 1),
                    kind: Kind::Punct,
                    norm: c.to_string(),
                    in_email: false,
                });
            }
            i += 1;
        }
    }
    out
}

/// Emails (lower-cased) and their byte spans.
fn find_emails(text: &str) -> (Vec<String>, Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let local_ok = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain_ok = |b: u8| b.is_ascii_alphanumeric() || b".-".contains(&b);
    let mut emails = Vec::new();
    let mut spans = Vec::new();
    for (at, _) in text.match_indices('@') {
        let mut s = at;
        while s > 0 && local_ok(bytes[s - 1]) {
            s -= 1;
        }
        while s < at && bytes[s] == b'.' {
            s += 1;
        }
        let mut e = at + 1;
        while e < bytes.len() && domain_ok(bytes[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(bytes[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s == at || e <= at + 1 {
            continue;
        }
        let domain = &text[at + 1..e];
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if tld_ok {
            let email = text[s..e].to_ascii_lowercase();
            if !emails.contains(&email) {
                emails.push(email);
            }
            spans.push((s, e));
        }
    }
    (emails, spans)
}

// ---------------------------------------------------------------------------------------------
// Numbers: order numbers, tracking numbers, ZIP codes

#[derive(Default)]
struct Numbers {
    orders: Vec<String>,
    tracking: Vec<String>,
    zips_near: Vec<String>,
    zips_other: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cue {
    Order,
    Tracking,
    Zip,
    /// Invoices, phones, money, units, quantities: not any of ours.
    Else,
}

/// Damerau (optimal string alignment) distance, for the short keywords here.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// "order", "purchase" and their plurals, typos and run-ons ("theorder", "purhase").
fn is_order_word(w: &str) -> bool {
    if matches!(
        w,
        "older" | "border" | "ordered" | "odor" | "other" | "orange"
    ) {
        return false;
    }
    if matches!(
        w,
        "order" | "orders" | "purchase" | "purchases" | "ord" | "po"
    ) {
        return true;
    }
    let n = w.chars().count();
    (n >= 4 && (edit_distance(w, "order") <= 1 || edit_distance(w, "orders") <= 1))
        || (n >= 6 && edit_distance(w, "purchase") <= 2)
        || (n > 5 && (w.ends_with("order") || w.ends_with("purchase")))
}

fn cue_of(w: &str) -> Option<Cue> {
    if is_order_word(w) {
        return Some(Cue::Order);
    }
    Some(match w {
        "tracking" | "tracker" | "waybill" | "awb" | "ups" | "usps" | "fedex" | "dhl" => {
            Cue::Tracking
        }
        "zip" | "zipcode" | "postal" | "postcode" | "zips" => Cue::Zip,
        "invoice" | "bill" | "receipt" | "phone" | "call" | "tel" | "mobile" | "cell" | "card"
        | "account" | "ticket" | "case" | "ref" | "reference" | "sku" | "item" | "product"
        | "model" | "size" | "apt" | "apartment" | "suite" | "ste" | "unit" | "room" | "box"
        | "dollars" | "usd" | "cents" | "ending" | "last" | "pin" | "code" | "password" | "id" => {
            Cue::Else
        }
        _ => return None,
    })
}

/// Labels of `#…` numbers that are not orders: invoices and bills (typos too), units, cases.
fn not_an_order_label(w: &str) -> bool {
    let n = w.chars().count();
    matches!(cue_of(w), Some(Cue::Else))
        || (n >= 5 && (edit_distance(w, "invoice") <= 2 || edit_distance(w, "invoices") <= 2))
        || ((3..=6).contains(&n)
            && (edit_distance(w, "bill") <= 1 || edit_distance(w, "bills") <= 1)
            && !matches!(
                w,
                "will"
                    | "fill"
                    | "pill"
                    | "hill"
                    | "kill"
                    | "mill"
                    | "till"
                    | "ball"
                    | "bell"
                    | "is"
                    | "its"
                    | "ill"
                    | "all"
                    | "bit"
                    | "big"
                    | "bin"
            ))
}

/// Words that may stand between a cue and its number ("order number is 1234").
fn is_filler(w: &str) -> bool {
    matches!(
        w,
        "number"
            | "numbers"
            | "no"
            | "nr"
            | "num"
            | "is"
            | "was"
            | "its"
            | "it"
            | "the"
            | "my"
            | "of"
            | "for"
            | "with"
            | "on"
            | "and"
            | "or"
            | "a"
            | "code"
            | "id"
            | "#"
            | ":"
            | ","
            | "-"
            | "."
            | "("
            | "ending"
            | "in"
    )
}

/// Which cue governs token `i`: the nearest cue word among the five tokens before it, looking
/// through fillers and earlier numbers of the same list ("orders 1001 and 1002").
fn cue_before(toks: &[Tok], i: usize) -> Option<Cue> {
    let mut seen = 0;
    let mut j = i;
    while j > 0 && seen < 6 {
        j -= 1;
        let t = &toks[j];
        if t.in_email {
            return None;
        }
        if let Some(c) = cue_of(&t.norm) {
            // "number" / "code" / "id" are fillers first and cues only for Else.
            if !(is_filler(&t.norm) && c == Cue::Else) {
                return Some(c);
            }
        }
        let abbrev_dot = t.norm == "."
            && j > 0
            && matches!(toks[j - 1].norm.as_str(), "no" | "nr" | "num" | "ord");
        if t.kind == Kind::Punct && matches!(t.norm.as_str(), "." | "?" | "!" | ";") && !abbrev_dot
        {
            return None;
        }
        if abbrev_dot {
            continue;
        }
        if !is_filler(&t.norm) && t.kind != Kind::Num {
            return None;
        }
        seen += 1;
    }
    None
}

fn has_word(toks: &[Tok], f: impl Fn(&str) -> bool) -> bool {
    toks.iter().any(|t| !t.in_email && f(&t.norm))
}

fn classify_numbers(text: &str, toks: &[Tok]) -> Numbers {
    let mut out = Numbers::default();
    let mentions_tracking = has_word(toks, |w| {
        matches!(
            w,
            "tracking" | "tracker" | "waybill" | "ups" | "usps" | "fedex" | "dhl" | "carrier"
        )
    });
    // Tracking numbers written in groups: "9400 1000 0000 0000 0000 00".
    let mut grouped = vec![false; toks.len()];
    let mut i = 0;
    while i < toks.len() {
        let mut j = i;
        while j < toks.len()
            && toks[j].kind == Kind::Num
            && toks[j].norm.len() <= 6
            && (j == i || text.get(toks[j - 1].end..toks[j].start) == Some(" "))
        {
            j += 1;
        }
        if j - i >= 3 {
            let joined: String = toks[i..j].iter().map(|t| t.norm.as_str()).collect();
            let usps = (20..=22).contains(&joined.len()) && joined.starts_with('9');
            let other = matches!(joined.len(), 10 | 12 | 15) && mentions_tracking;
            if usps || other {
                push_unique(&mut out.tracking, joined);
                grouped[i..j].iter_mut().for_each(|g| *g = true);
            }
        }
        i = j.max(i + 1);
    }
    for (i, t) in toks.iter().enumerate() {
        if t.in_email || grouped[i] || !matches!(t.kind, Kind::Num | Kind::Alnum) {
            continue;
        }
        let prev = i.checked_sub(1).map(|p| &toks[p]);
        let hashed = prev.is_some_and(|p| p.norm == "#" && p.end + 1 >= t.start);
        let upper = text[t.start..t.end].to_ascii_uppercase();
        let digits = upper.chars().filter(char::is_ascii_digit).count();
        let len = upper.chars().count();
        let glued_before = prev.is_some_and(|p| {
            p.end == t.start && matches!(p.norm.as_str(), "$" | "€" | "£" | "-" | "/" | "." | "+")
        });
        let next = toks.get(i + 1);
        let glued_after = next.is_some_and(|n| {
            n.start == t.end
                && matches!(n.norm.as_str(), "." | "/" | "%")
                && toks
                    .get(i + 2)
                    .is_some_and(|m| m.start == n.end && m.kind == Kind::Num)
        });
        let cue = cue_before(toks, if hashed { i - 1 } else { i });

        // UPS: 1Z + 16 letters/digits.
        if t.kind == Kind::Alnum && len == 18 && upper.starts_with("1Z") {
            push_unique(&mut out.tracking, upper);
            continue;
        }
        if hashed {
            let unit_before = i >= 2 && not_an_order_label(&toks[i - 2].norm);
            if digits > 0 && (3..=20).contains(&len) && !unit_before {
                push_unique(&mut out.orders, format!("#{upper}"));
            }
            continue;
        }
        if t.kind == Kind::Alnum {
            // Run-on "order732201349959" / "purchase113542617735902".
            let cut = upper
                .find(|c: char| !c.is_alphabetic())
                .unwrap_or(upper.len());
            let (letters, rest) = upper.split_at(cut);
            if letters.len() >= 3
                && is_order_word(&letters.to_lowercase())
                && rest.len() >= 4
                && rest.chars().all(|c| c.is_ascii_digit())
            {
                push_unique(&mut out.orders, format!("#{rest}"));
                continue;
            }
            // τ-bench / shop style ids: one letter then 5 to 10 digits ("W2611340", "D1234567").
            let mut cs = upper.chars();
            let first_letter = cs.next().is_some_and(|c| c.is_ascii_alphabetic());
            if first_letter
                && digits == len - 1
                && (5..=10).contains(&digits)
                && cue != Some(Cue::Tracking)
            {
                push_unique(&mut out.orders, format!("#{upper}"));
            } else if cue == Some(Cue::Tracking) && len >= 10 {
                push_unique(&mut out.tracking, upper);
            }
            continue;
        }
        if glued_before || glued_after {
            continue;
        }
        // Digits only.
        if (20..=22).contains(&digits) && upper.starts_with('9') && cue != Some(Cue::Order) {
            push_unique(&mut out.tracking, upper);
            continue;
        }
        match cue {
            Some(Cue::Order) if (4..=20).contains(&digits) => {
                push_unique(&mut out.orders, format!("#{upper}"));
                continue;
            }
            Some(Cue::Tracking) if digits >= 8 => {
                push_unique(&mut out.tracking, upper);
                continue;
            }
            _ => {}
        }
        if matches!(digits, 10 | 12 | 15 | 20 | 22) && mentions_tracking && cue != Some(Cue::Else) {
            push_unique(&mut out.tracking, upper);
            continue;
        }
        if digits == 5 && cue != Some(Cue::Else) && cue != Some(Cue::Order) {
            let money_after = next.is_some_and(|n| {
                matches!(n.norm.as_str(), "dollars" | "usd" | "bucks" | "cents" | "%")
            });
            if money_after {
                continue;
            }
            // A ZIP after a two-letter state code counts as said-to-be-a-ZIP.
            let after_state =
                prev.is_some_and(|p| p.kind == Kind::Word && state_code(&p.norm).is_some());
            if cue == Some(Cue::Zip) || after_state {
                push_unique(&mut out.zips_near, upper);
            } else {
                push_unique(&mut out.zips_other, upper);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Names

const NOT_NAMES: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "so",
    "not",
    "no",
    "yes",
    "on",
    "in",
    "at",
    "to",
    "for",
    "from",
    "with",
    "of",
    "my",
    "your",
    "our",
    "is",
    "am",
    "are",
    "was",
    "be",
    "been",
    "here",
    "there",
    "just",
    "really",
    "very",
    "also",
    "still",
    "sorry",
    "trying",
    "looking",
    "having",
    "going",
    "calling",
    "writing",
    "wondering",
    "interested",
    "unable",
    "able",
    "waiting",
    "back",
    "done",
    "good",
    "fine",
    "well",
    "ok",
    "okay",
    "happy",
    "sure",
    "glad",
    "new",
    "confused",
    "annoyed",
    "upset",
    "frustrated",
    "order",
    "email",
    "zip",
    "address",
    "phone",
    "customer",
    "account",
    "about",
    "regarding",
    "hoping",
    "it",
    "this",
    "that",
    "me",
    "you",
    "he",
    "she",
    "they",
    "we",
    "i",
    "hi",
    "hello",
    "hey",
    "thanks",
    "please",
    "asking",
    "reaching",
    "contacting",
    "following",
    "returning",
    "planning",
    "about",
    "over",
    "tired",
    "moving",
    "ready",
    "afraid",
    "worried",
    "disappointed",
    "pleased",
    "satisfied",
    "getting",
    "only",
    "currently",
    "finally",
    "again",
    "now",
    "then",
    "after",
    "before",
    "if",
    "when",
    "what",
    "who",
    "where",
    "why",
    "how",
    "can",
    "could",
    "would",
    "will",
    "should",
    "do",
    "did",
    "does",
    "have",
    "has",
    "had",
    "want",
    "need",
    "like",
    "get",
    "got",
    "call",
    "called",
    "name",
    "names",
    "first",
    "last",
    "full",
    "same",
    "one",
    "all",
    "any",
    "some",
    "out",
    "up",
    "down",
    "off",
    "into",
    "by",
];

fn name_like(text: &str, t: &Tok, need_capital: bool) -> bool {
    if t.kind != Kind::Word || t.in_email || NOT_NAMES.contains(&t.norm.as_str()) {
        return false;
    }
    let raw = &text[t.start..t.end];
    let first = raw.chars().next();
    if need_capital && !first.is_some_and(char::is_uppercase) {
        return false;
    }
    if need_capital && t.norm.ends_with("ing") {
        return false;
    }
    raw.chars().filter(|c| c.is_alphabetic()).count() >= 2 || raw.chars().count() >= 2
}

fn title_case(raw: &str) -> String {
    let all_lower = raw.chars().all(|c| !c.is_uppercase());
    let all_upper = raw.chars().all(|c| !c.is_lowercase());
    if !(all_lower || all_upper) {
        return raw.to_string();
    }
    let mut out = String::new();
    let mut start = true;
    for c in raw.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = matches!(c, '-' | '\'' | '’');
    }
    out
}

fn find_names(text: &str, toks: &[Tok]) -> Vec<(String, String)> {
    let mut names = Vec::new();
    let norm = |i: usize| toks.get(i).map(|t| t.norm.as_str()).unwrap_or("");
    let mut i = 0;
    while i < toks.len() {
        // (index of the first name word, whether capitals are required)
        let start = match norm(i) {
            "my" if norm(i + 1) == "name" && matches!(norm(i + 2), "is" | "s") => {
                Some((i + 3, false))
            }
            "my" if norm(i + 1) == "names" => Some((i + 2, false)),
            "name" if norm(i + 1) == ":" => Some((i + 2, false)),
            "name" if norm(i + 1) == "is" && (i == 0 || norm(i - 1) != "my") => Some((i + 2, true)),
            "im" => Some((i + 1, true)),
            "i" if norm(i + 1) == "am" => Some((i + 2, true)),
            "this" if norm(i + 1) == "is" => Some((i + 2, true)),
            "call" if norm(i + 1) == "me" => Some((i + 2, true)),
            _ => None,
        };
        let Some((s, need_capital)) = start else {
            i += 1;
            continue;
        };
        let capital_run = |k: usize| toks.get(k).is_some_and(|t| name_like(text, t, true));
        let mut run = Vec::new();
        let mut k = s;
        while k < toks.len() && run.len() < 3 {
            let t = &toks[k];
            let ok = if run.len() < 2 {
                name_like(text, t, need_capital)
            } else {
                capital_run(k) && capital_run(s) && capital_run(s + 1)
            };
            if !ok {
                break;
            }
            run.push(k);
            k += 1;
        }
        if run.len() >= 2 {
            let first = title_case(&text[toks[run[0]].start..toks[run[0]].end]);
            let last_ix = run[run.len() - 1];
            let last = title_case(&text[toks[last_ix].start..toks[last_ix].end]);
            let pair = (first, last);
            if !names.contains(&pair) {
                names.push(pair);
            }
            i = k;
        } else {
            i += 1;
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Yes / no

/// Yes / no, clause by clause (punctuation and "but" separate clauses); the last clause that
/// says either decides ("ok, but actually wait" is a no; "no, go ahead" a yes).
fn yes_no(toks: &[Tok]) -> (bool, bool) {
    let mut clauses: Vec<Vec<&str>> = vec![Vec::new()];
    for t in toks.iter().filter(|t| !t.in_email) {
        let w = t.norm.as_str();
        if (t.kind == Kind::Punct && !matches!(w, "#" | "$" | "@" | "&" | "'" | "’")) || w == "but"
        {
            clauses.push(Vec::new());
            continue;
        }
        if t.kind == Kind::Punct {
            continue;
        }
        if let Some(c) = clauses.last_mut() {
            let filler = matches!(
                w,
                "oh" | "um"
                    | "uh"
                    | "umm"
                    | "well"
                    | "hmm"
                    | "ah"
                    | "and"
                    | "so"
                    | "then"
                    | "actually"
            );
            if !(c.is_empty() && filler) {
                c.push(w);
            }
        }
    }
    let single = clauses.iter().filter(|c| !c.is_empty()).count() == 1;
    let mut decision = (false, false);
    for c in clauses.iter().filter(|c| !c.is_empty()) {
        let d = clause_yes_no(c, single);
        if d.0 || d.1 {
            decision = d;
        }
    }
    decision
}

fn clause_yes_no(c: &[&str], whole_message: bool) -> (bool, bool) {
    let starts = |c: &[&str], p: &[&str]| c.len() >= p.len() && c[..p.len()] == *p;
    let negation = |w: &str| {
        matches!(
            w,
            "dont" | "not" | "cant" | "cannot" | "wont" | "never" | "didnt" | "shouldnt"
        )
    };
    // A phrase anywhere in the clause, not negated just before, not followed by "not".
    let anywhere = |p: &[&str]| {
        (0..c.len()).any(|k| {
            starts(&c[k..], p)
                && !(k >= 1 && negation(c[k - 1]))
                && !(k >= 2 && c[k - 2] == "do" && c[k - 1] == "not")
                && c.get(k + p.len()).is_none_or(|n| *n != "not")
        })
    };
    let has = |p: &[&str]| (0..c.len()).any(|k| starts(&c[k..], p));
    let mut yes = false;
    let mut no = false;
    let second = c.get(1).copied().unwrap_or("");
    match c[0] {
        "yes" | "yeah" | "yea" | "yep" | "yup" | "ya" | "yah" | "yass" | "sure" | "ok" | "okay"
        | "k" | "kk" | "alright" | "correct" | "absolutely" | "definitely" | "affirmative"
        | "certainly" | "confirm" | "confirmed" | "proceed" | "y" | "ofc" | "aye" => yes = true,
        "no" | "nope" | "nah" | "nay" | "negative" | "n"
            if !matches!(
                second,
                "longer" | "problem" | "problems" | "worries" | "idea" | "one" | "doubt"
            ) =>
        {
            no = true;
        }
        "dont" | "do" if c[0] == "dont" || second == "not" => {
            let next = if c[0] == "dont" {
                second
            } else {
                c.get(2).copied().unwrap_or("")
            };
            if !matches!(
                next,
                "need" | "know" | "have" | "see" | "think" | "understand" | "like" | "get" | "want"
            ) {
                no = true;
            }
        }
        "wait" | "stop" | "nevermind" => no = true,
        "please" if c.len() == 1 && whole_message => yes = true,
        _ => {}
    }
    for p in [
        &["do", "it"][..],
        &["just", "do", "it"],
        &["please", "do"],
        &["that", "works"],
    ] {
        if starts(c, p) && c.get(p.len()).is_none_or(|n| *n != "not") {
            yes = true;
        }
    }
    for p in [
        &["go", "ahead"][..],
        &["sounds", "good"],
        &["thats", "right"],
        &["that", "is", "right"],
        &["thats", "correct"],
        &["that", "is", "correct"],
        &["yes", "please"],
        &["i", "confirm"],
        &["please", "proceed"],
        &["you", "can", "proceed"],
        &["works", "for", "me"],
        &["fine", "by", "me"],
        &["lets", "do", "it"],
        &["please", "do", "it"],
    ] {
        if anywhere(p) {
            yes = true;
        }
    }
    for p in [&["not", "now"][..], &["not", "yet"], &["not", "really"]] {
        if starts(c, p) {
            no = true;
        }
    }
    if c == ["cancel", "that"] || c.last() == Some(&"wait") || starts(c, &["wait", "a"]) {
        no = true;
    }
    for p in [
        &["no", "thanks"][..],
        &["no", "thank", "you"],
        &["dont", "do", "it"],
        &["do", "not", "do", "it"],
        &["dont", "proceed"],
        &["do", "not", "proceed"],
        &["dont", "go", "ahead"],
        &["hold", "on"],
        &["hold", "off"],
        &["never", "mind"],
        &["dont", "cancel"],
        &["do", "not", "cancel"],
        &["please", "dont"],
        &["please", "do", "not"],
    ] {
        if has(p) {
            no = true;
        }
    }
    if no
        && yes
        && !c
            .iter()
            .any(|w| matches!(*w, "yes" | "yeah" | "yep" | "sure" | "ok" | "okay"))
    {
        // "don't go ahead": the refusal holds.
        yes = false;
    }
    (yes, no)
}

// ---------------------------------------------------------------------------------------------
// Cancel reason and payment hint

fn cancel_reason(words: &[&str]) -> Option<String> {
    let joined = format!(" {} ", words.join(" "));
    let has = |p: &str| joined.contains(&format!(" {p} "));
    let has_prefix = |p: &str| joined.contains(&format!(" {p}"));
    const MISTAKE: &[&str] = &[
        "by mistake",
        "by accident",
        "in error",
        "a mistake",
        "my mistake",
        "my bad",
        "wrong one",
        "the wrong",
        "didnt mean to",
        "did not mean to",
        "never meant to",
        "meant to order",
        "meant to buy",
        "ordered twice",
        "double ordered",
        "ordered it twice",
        "duplicate order",
        "bought twice",
        "by error",
        "unintentionally",
        "not on purpose",
        "wrongly ordered",
        "ordered wrongly",
        "wrong size",
        "wrong color",
        "wrong colour",
        "wrong item",
        "wrong product",
        "misclick",
        "clicked the wrong",
    ];
    const MISTAKE_PREFIX: &[&str] = &["accident", "mistaken", "misorder", "mis-order", "erroneous"];
    const NOT_NEEDED: &[&str] = &[
        "no longer need",
        "no longer needed",
        "no longer want",
        "no longer require",
        "dont need",
        "do not need",
        "dont really need",
        "not needed",
        "not need",
        "no need for",
        "need it anymore",
        "need them anymore",
        "need this anymore",
        "want it anymore",
        "want them anymore",
        "changed my mind",
        "change of mind",
        "dont require",
        "no use for",
        "not necessary",
        "unnecessary",
        "wont need",
        "will not need",
        "wont be needing",
        "didnt need",
        "found it cheaper",
        "found a cheaper",
        "found it elsewhere",
        "bought it elsewhere",
        "got it elsewhere",
        "found a better",
        "dont want it",
        "dont want them",
        "dont want this",
        "dont want that",
        "dont want the",
        "do not want it",
        "do not want the",
        "not want it",
        "no longer wanted",
        "have no need",
        "dont want these",
        "no longer interested",
        "not interested anymore",
    ];
    if MISTAKE.iter().any(|p| has(p)) || MISTAKE_PREFIX.iter().any(|p| has_prefix(p)) {
        return Some("ordered by mistake".to_string());
    }
    if NOT_NEEDED.iter().any(|p| has(p)) {
        return Some("no longer needed".to_string());
    }
    None
}

fn payment_hint(words: &[&str]) -> Option<String> {
    // (position, hint) of each mention; negated mentions are skipped.
    let mut found: Vec<(usize, &str)> = Vec::new();
    let at = |i: usize| words.get(i).copied().unwrap_or("");
    for i in 0..words.len() {
        let hint = match (at(i), at(i + 1), at(i + 2)) {
            ("gift", "card" | "cards" | "certificate" | "voucher", _) => "gift card",
            ("giftcard" | "gift-card", _, _) => "gift card",
            ("store", "credit", _) => "gift card",
            (
                "original",
                "payment" | "method" | "card" | "account" | "paypal" | "way" | "form" | "source"
                | "credit" | "debit" | "visa" | "mastercard" | "bank",
                _,
            ) => "original",
            // "… back to the original."
            ("original", "", _) if i >= 2 && matches!(at(i - 2), "to" | "on") => "original",
            ("same", "card" | "payment" | "method" | "account" | "way", _) => "original",
            ("card", "i", "paid" | "used") => "original",
            ("way" | "how", "i", "paid") => "original",
            ("where", "it", "came") => "original",
            ("paypal" | "pay-pal", _, _) => "paypal",
            ("pay", "pal", _) => "paypal",
            ("credit" | "debit", "card" | "cards", _) => "credit card",
            ("visa" | "mastercard" | "amex", _, _) => "credit card",
            ("american", "express", _) => "credit card",
            _ => continue,
        };
        let window = &words[i.saturating_sub(3)..i];
        let negated = window
            .iter()
            .any(|w| matches!(*w, "not" | "dont" | "than" | "no" | "without" | "never"))
            || window.windows(2).any(|p| p == ["instead", "of"]);
        if !negated {
            found.push((i, hint));
        }
    }
    let priority = |h: &str| match h {
        "gift card" => 0,
        "original" => 1,
        "paypal" => 2,
        _ => 3,
    };
    found
        .into_iter()
        .min_by_key(|(pos, h)| (priority(h), *pos))
        .map(|(_, h)| h.to_string())
}

// ---------------------------------------------------------------------------------------------
// Addresses

const STATES: &[(&str, &str)] = &[
    ("AL", "alabama"),
    ("AK", "alaska"),
    ("AZ", "arizona"),
    ("AR", "arkansas"),
    ("CA", "california"),
    ("CO", "colorado"),
    ("CT", "connecticut"),
    ("DE", "delaware"),
    ("DC", "district of columbia"),
    ("FL", "florida"),
    ("GA", "georgia"),
    ("HI", "hawaii"),
    ("ID", "idaho"),
    ("IL", "illinois"),
    ("IN", "indiana"),
    ("IA", "iowa"),
    ("KS", "kansas"),
    ("KY", "kentucky"),
    ("LA", "louisiana"),
    ("ME", "maine"),
    ("MD", "maryland"),
    ("MA", "massachusetts"),
    ("MI", "michigan"),
    ("MN", "minnesota"),
    ("MS", "mississippi"),
    ("MO", "missouri"),
    ("MT", "montana"),
    ("NE", "nebraska"),
    ("NV", "nevada"),
    ("NH", "new hampshire"),
    ("NJ", "new jersey"),
    ("NM", "new mexico"),
    ("NY", "new york"),
    ("NC", "north carolina"),
    ("ND", "north dakota"),
    ("OH", "ohio"),
    ("OK", "oklahoma"),
    ("OR", "oregon"),
    ("PA", "pennsylvania"),
    ("RI", "rhode island"),
    ("SC", "south carolina"),
    ("SD", "south dakota"),
    ("TN", "tennessee"),
    ("TX", "texas"),
    ("UT", "utah"),
    ("VT", "vermont"),
    ("VA", "virginia"),
    ("WA", "washington"),
    ("WV", "west virginia"),
    ("WI", "wisconsin"),
    ("WY", "wyoming"),
    ("PR", "puerto rico"),
    ("GU", "guam"),
    ("VI", "virgin islands"),
];

fn state_code(norm: &str) -> Option<&'static str> {
    STATES
        .iter()
        .find(|(code, _)| code.eq_ignore_ascii_case(norm))
        .map(|(code, _)| *code)
}

const STREET_SUFFIXES: &[&str] = &[
    "st",
    "street",
    "ave",
    "av",
    "avenue",
    "rd",
    "road",
    "blvd",
    "boulevard",
    "dr",
    "drive",
    "ln",
    "lane",
    "way",
    "ct",
    "court",
    "pl",
    "place",
    "ter",
    "terrace",
    "pkwy",
    "parkway",
    "hwy",
    "highway",
    "cir",
    "circle",
    "loop",
    "trl",
    "trail",
    "sq",
    "square",
    "aly",
    "alley",
    "row",
    "walk",
    "pike",
    "plz",
    "plaza",
    "xing",
    "crossing",
    "path",
    "run",
    "cv",
    "cove",
    "pt",
    "point",
    "ridge",
    "hl",
    "hill",
    "holw",
    "hollow",
];

const UNIT_WORDS: &[&str] = &[
    "apt",
    "apartment",
    "suite",
    "ste",
    "unit",
    "fl",
    "floor",
    "bldg",
    "building",
    "rm",
    "room",
    "lot",
    "dept",
    "space",
    "#",
];

const DIRECTIONS: &[&str] = &[
    "n", "s", "e", "w", "ne", "nw", "se", "sw", "north", "south", "east", "west",
];

/// A state written at `toks[i..]`: (code, tokens used). Codes must be written in capitals unless
/// a ZIP follows; names may be one to three words.
fn state_at(text: &str, toks: &[Tok], i: usize) -> Option<(&'static str, usize)> {
    let t = toks.get(i)?;
    if t.kind != Kind::Word {
        return None;
    }
    let zip_follows = |k: usize| {
        toks.get(k)
            .is_some_and(|z| z.kind == Kind::Num && z.norm.len() == 5)
    };
    if t.norm.len() == 2 {
        let code = state_code(&t.norm)?;
        let raw = &text[t.start..t.end];
        if raw.chars().all(|c| c.is_ascii_uppercase()) || zip_follows(i + 1) {
            return Some((code, 1));
        }
        return None;
    }
    for (code, name) in STATES {
        let parts: Vec<&str> = name.split(' ').collect();
        let matches = parts
            .iter()
            .enumerate()
            .all(|(k, p)| toks.get(i + k).is_some_and(|x| x.norm == *p));
        if matches {
            return Some((code, parts.len()));
        }
    }
    None
}

fn slice(text: &str, toks: &[Tok], from: usize, to: usize) -> String {
    if from >= to || to > toks.len() {
        return String::new();
    }
    text[toks[from].start..toks[to - 1].end].trim().to_string()
}

fn find_address(text: &str, toks: &[Tok]) -> Option<AddressMention> {
    let context = has_word(toks, |w| {
        matches!(
            w,
            "address"
                | "ship"
                | "deliver"
                | "send"
                | "live"
                | "moved"
                | "move"
                | "street"
                | "apt"
                | "suite"
        )
    });
    for i in 0..toks.len() {
        let t = &toks[i];
        if t.in_email || !(t.kind == Kind::Num || t.kind == Kind::Alnum) || t.norm.len() > 6 {
            continue;
        }
        if t.kind == Kind::Alnum && !t.norm.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        if i > 0 && matches!(toks[i - 1].norm.as_str(), "#" | "$" | "-" | "/") {
            continue;
        }
        // Street words up to a suffix: "123 Main St", "4 North 5th Avenue".
        let mut k = i + 1;
        let mut suffix_end = None;
        let mut capitalized = true;
        while k < toks.len() && k <= i + 6 {
            let w = &toks[k];
            if !(w.kind == Kind::Word || w.norm == "." || (w.kind == Kind::Alnum && k > i + 1)) {
                break;
            }
            if w.norm == "."
                && toks[k - 1].kind == Kind::Word
                && toks[k - 1].norm.len() <= 3
                && w.start == toks[k - 1].end
            {
                k += 1;
                continue;
            }
            if k > i + 1 && STREET_SUFFIXES.contains(&w.norm.as_str()) {
                suffix_end = Some(k + 1);
                break;
            }
            capitalized &= text[w.start..w.end]
                .chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit());
            k += 1;
        }
        let Some(mut end) = suffix_end else { continue };
        if end == i + 2 {
            continue; // number + suffix only
        }
        if toks
            .get(end)
            .is_some_and(|p| p.norm == "." && p.start == toks[end - 1].end)
        {
            end += 1;
        }
        if toks
            .get(end)
            .is_some_and(|d| DIRECTIONS.contains(&d.norm.as_str()) && d.kind == Kind::Word)
            && toks
                .get(end + 1)
                .is_none_or(|x| x.kind == Kind::Punct || UNIT_WORDS.contains(&x.norm.as_str()))
        {
            end += 1;
        }
        let mut a = AddressMention {
            address1: slice(text, toks, i, end).trim_end_matches('.').to_string(),
            ..AddressMention::default()
        };
        let mut k = end;
        let skip_comma = |k: &mut usize| {
            while toks
                .get(*k)
                .is_some_and(|p| matches!(p.norm.as_str(), "," | "."))
            {
                *k += 1;
            }
        };
        skip_comma(&mut k);
        // Unit: "Apt 4", "Suite 394", "#5B", "Apt. 4B".
        if let Some(u) = toks.get(k)
            && UNIT_WORDS.contains(&u.norm.as_str())
        {
            let mut v = k + 1;
            if toks
                .get(v)
                .is_some_and(|p| p.norm == "." || (p.norm == "#" && u.norm != "#"))
            {
                v += 1;
            }
            if toks.get(v).is_some_and(|x| {
                matches!(x.kind, Kind::Num | Kind::Alnum)
                    || (x.kind == Kind::Word && x.norm.len() <= 2)
            }) {
                a.address2 = slice(text, toks, k, v + 1);
                k = v + 1;
            }
        }
        skip_comma(&mut k);
        // City: words up to a comma or a state.
        let city_start = k;
        let mut state = None;
        while k < toks.len() && k < city_start + 4 {
            if k > city_start
                && let Some(s) = state_at(text, toks, k)
            {
                state = Some(s);
                break;
            }
            let w = &toks[k];
            if w.kind != Kind::Word {
                break;
            }
            k += 1;
        }
        let city_end = k;
        if state.is_none() {
            skip_comma(&mut k);
            state = state_at(text, toks, k);
        }
        if let Some((code, used)) = state {
            a.city = slice(text, toks, city_start, city_end);
            a.state = code.to_string();
            k += used;
            skip_comma(&mut k);
            if let Some(z) = toks.get(k)
                && z.kind == Kind::Num
                && z.norm.len() == 5
            {
                a.zip = z.norm.clone();
            }
        } else if let Some(z) = toks
            .get(k)
            .filter(|z| z.kind == Kind::Num && z.norm.len() == 5)
        {
            // "…, Springfield 62704": city then ZIP without a state.
            a.city = slice(text, toks, city_start, city_end);
            a.zip = z.norm.clone();
        }
        if capitalized || context || !a.city.is_empty() || !a.address2.is_empty() {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests;
