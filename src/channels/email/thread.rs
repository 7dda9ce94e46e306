//! Conversation tokens in addresses and subjects, so a reply threads even when the shopper's
//! client drops In-Reply-To/References or rewrites the subject, plus subject normalization and
//! Amazon buyer-seller relay helpers. Pure string functions: no I/O, no database.
//!
//! Token design: the token is opaque. The store mints a random lower-case base-36 token of 26
//! characters (≈ 134 bits, from a CSPRNG) per conversation and maps it back
//! (`Store::reply_token` / `conversation_by_reply_token`); this module only formats it into
//! "help+c-<token>@shop" and "… [#c-<token>]", and finds it again (any case, after
//! "Re:"/"AW:"/"SV:" rewrites). Only the recipient of our email learns it, so a message carrying
//! it came from that mailbox; shorter tokens minted by earlier versions still thread, but only a
//! full-length one counts as that proof ([`strong_token`]).
//! [`conversation_token`] offers a deterministic alternative (HMAC-SHA256 of the conversation id
//! under a server secret, 16 base32 characters) for a store that prefers not to keep state;
//! the store still maps it back, as the id cannot be recovered from it.

use super::parse::ParsedEmail;

/// The prefix that marks a conversation token in a plus-address or subject tag.
pub const TOKEN_PREFIX: &str = "c-";

const TOKEN_MIN: usize = 4;
const TOKEN_MAX: usize = 64;

/// Whether a token is long enough to prove that its sender received our email.
pub fn strong_token(token: &str) -> bool {
    token.len() >= crate::store::REPLY_TOKEN_CHARS
}

/// "help@shop.example" + "k3x9" → "help+c-k3x9@shop.example". A display-name form
/// ("Help <help@shop.example>") is reduced to the address; an existing plus tag is kept
/// ("help+in@…" → "help+in+c-k3x9@…"). Without an "@" the address is returned unchanged.
pub fn reply_to_address(support_address: &str, token: &str) -> String {
    let address = bare(support_address);
    let Some((local, domain)) = address.rsplit_once('@') else {
        return support_address.to_string();
    };
    format!(
        "{local}+{TOKEN_PREFIX}{}@{domain}",
        token.trim().to_ascii_lowercase()
    )
}

/// Appends " [#c-<token>]" once: an existing tag for this token is kept, any other token tag is
/// replaced, so re-replies never accumulate tags.
pub fn subject_with_token(subject: &str, token: &str) -> String {
    let token = token.trim().to_ascii_lowercase();
    let tags = subject_tags(subject);
    if tags.len() == 1 && tags[0].2 == token {
        return collapse_ws(subject);
    }
    let base = collapse_ws(&remove_ranges(subject, &tags));
    if base.is_empty() {
        format!("[#{TOKEN_PREFIX}{token}]")
    } else {
        format!("{base} [#{TOKEN_PREFIX}{token}]")
    }
}

/// The conversation token of an inbound message: first a plus-address of the support address
/// in To / Cc / the envelope recipients (Delivered-To etc.; those may carry another domain after
/// forwarding), then a "[#c-…]" tag in the subject (the last one). Lower-cased.
pub fn find_token(parsed: &ParsedEmail, support_address: &str) -> Option<String> {
    let support = bare(support_address);
    if let Some((local, domain)) = support.rsplit_once('@') {
        let prefix = format!("{local}+{TOKEN_PREFIX}");
        let from_address = |addr: &str, any_domain: bool| -> Option<String> {
            let (l, d) = addr.rsplit_once('@')?;
            if !any_domain && d != domain {
                return None;
            }
            let token = l.to_lowercase().strip_prefix(&prefix)?.to_string();
            valid_token(&token).then_some(token)
        };
        let headers = parsed.to.iter().chain(&parsed.cc).map(|m| m.email.as_str());
        if let Some(t) = headers
            .filter_map(|a| from_address(&a.to_lowercase(), false))
            .next()
        {
            return Some(t);
        }
        if let Some(t) = parsed
            .delivered_to
            .iter()
            .filter_map(|a| from_address(&a.to_lowercase(), true))
            .next()
        {
            return Some(t);
        }
    }
    subject_tags(&parsed.subject).pop().map(|(_, _, t)| t)
}

/// For display and matching: reply/forward prefixes ("Re:", "RE :", "Fwd:", "AW:", "WG:",
/// "SV:", "Antw:", "Re[2]:", "回复：", …, repeated, any case) and token tags removed,
/// whitespace collapsed.
pub fn normalize_subject(subject: &str) -> String {
    let without_tags = remove_ranges(subject, &subject_tags(subject));
    let mut s = collapse_ws(&without_tags);
    while let Some((rest, _)) = strip_prefix(&s) {
        s = rest.trim_start().to_string();
    }
    s
}

/// Whether the subject's first prefix marks a forward ("Fwd:", "FW:", "WG:", "TR:", "RV:",
/// "Doorst:", "ENC:", "I:", "PD:", …) — the body is then forwarded content, not history.
pub fn is_forward_subject(subject: &str) -> bool {
    let trimmed = collapse_ws(subject);
    strip_prefix(&trimmed).is_some_and(|(_, forward)| forward)
}

/// Amazon buyer-seller messaging relay addresses ("abc123@marketplace.amazon.com", ".co.uk",
/// ".de", …).
pub fn is_amazon_relay(addr: &str) -> bool {
    const TLDS: &[&str] = &[
        "com", "ca", "com.mx", "com.br", "co.uk", "de", "fr", "it", "es", "nl", "se", "pl",
        "com.be", "ie", "com.tr", "ae", "sa", "eg", "in", "co.jp", "com.au", "sg", "co.za",
    ];
    let address = bare(addr);
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain
            .strip_prefix("marketplace.amazon.")
            .is_some_and(|tld| TLDS.contains(&tld))
}

/// The first Amazon order id ("123-1234567-1234567", digital orders "D01-1234567-1234567") in
/// the subject, else in the text.
pub fn amazon_order_id(subject: &str, text: &str) -> Option<String> {
    find_order_id(subject).or_else(|| find_order_id(text))
}

fn valid_token(token: &str) -> bool {
    (TOKEN_MIN..=TOKEN_MAX).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// "Name <a@b>" → "a@b", lower-cased.
fn bare(addr: &str) -> String {
    let a = addr.trim();
    let a = match (a.rfind('<'), a.rfind('>')) {
        (Some(l), Some(r)) if l < r => &a[l + 1..r],
        _ => a,
    };
    a.trim().to_lowercase()
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Token tags in a subject: (byte start, byte end, lower-cased token). Accepts "[#c-x]",
/// "[ #C-X ]" and a bare "#c-x" (brackets lost), tolerant to case.
fn subject_tags(subject: &str) -> Vec<(usize, usize, String)> {
    let lower = subject.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let needle = format!("#{TOKEN_PREFIX}");
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle).map(|p| p + from) {
        let tok_start = pos + needle.len();
        let tok_end = bytes[tok_start..]
            .iter()
            .position(|b| !b.is_ascii_alphanumeric())
            .map_or(bytes.len(), |p| tok_start + p);
        from = tok_end.max(pos + 1);
        let token = &lower[tok_start..tok_end];
        let before_ok = pos == 0 || matches!(bytes[pos - 1], b'[' | b' ' | b'(' | b'\t');
        if !valid_token(token) || !before_ok {
            continue;
        }
        let mut start = pos;
        let mut end = tok_end;
        // Extend over "[ " … " ]" around the tag.
        let mut s = start;
        while s > 0 && bytes[s - 1] == b' ' {
            s -= 1;
        }
        let mut e = end;
        while e < bytes.len() && bytes[e] == b' ' {
            e += 1;
        }
        if s > 0 && bytes[s - 1] == b'[' && e < bytes.len() && bytes[e] == b']' {
            start = s - 1;
            end = e + 1;
        }
        tags.push((start, end, token.to_string()));
    }
    tags
}

fn remove_ranges(s: &str, ranges: &[(usize, usize, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, end, _) in ranges {
        if *start >= at && *end <= s.len() {
            out.push_str(&s[at..*start]);
            out.push(' ');
            at = *end;
        }
    }
    out.push_str(&s[at.min(s.len())..]);
    out
}

const REPLY_PREFIXES: &[&str] = &[
    "re", "aw", "sv", "antw", "antwort", "vs", "r", "rif", "ref", "res", "odp", "ynt", "vá", "atb",
    "απ", "σχετ", "回复", "回覆", "答复", "답장", "返信",
];
const FORWARD_PREFIXES: &[&str] = &[
    "fwd", "fw", "wg", "tr", "rv", "doorst", "enc", "i", "pd", "ilt", "vb", "vl", "fs", "转发",
    "轉寄", "전달", "転送",
];

/// Strips one leading "Re:"-style prefix; returns the rest and whether it was a forward.
fn strip_prefix(s: &str) -> Option<(String, bool)> {
    let word_end = s
        .char_indices()
        .find(|(_, c)| !c.is_alphabetic())
        .map_or(s.len(), |(i, _)| i);
    if word_end == 0 {
        return None;
    }
    let word = s[..word_end].to_lowercase();
    let forward = FORWARD_PREFIXES.contains(&word.as_str());
    if !forward && !REPLY_PREFIXES.contains(&word.as_str()) {
        return None;
    }
    let mut rest = &s[word_end..];
    // Counters: "Re[2]:", "Re(2):", "Re^2:".
    for (open, close) in [('[', ']'), ('(', ')')] {
        if let Some(r) = rest.strip_prefix(open)
            && let Some(end) = r.find(close)
            && r[..end].chars().all(|c| c.is_ascii_digit())
        {
            rest = &r[end + close.len_utf8()..];
        }
    }
    if let Some(r) = rest.strip_prefix('^') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let rest = rest.trim_start_matches(' ');
    let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：'))?;
    Some((rest.to_string(), forward))
}

fn find_order_id(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> bool {
        b.get(from..from + n)
            .is_some_and(|w| w.iter().all(u8::is_ascii_digit))
    };
    for i in 0..b.len() {
        let prefix_ok = digits(i, 3) || (b[i] == b'D' && digits(i + 1, 2));
        if !prefix_ok
            || b.get(i + 3) != Some(&b'-')
            || !digits(i + 4, 7)
            || b.get(i + 11) != Some(&b'-')
            || !digits(i + 12, 7)
        {
            continue;
        }
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        let after_ok = b
            .get(i + 19)
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'-'));
        if before_ok && after_ok {
            return Some(s[i..i + 19].to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::email::parse::{MailKind, Mailbox};

    fn email(to: &[&str], delivered: &[&str], subject: &str) -> ParsedEmail {
        ParsedEmail {
            message_id: None,
            in_reply_to: vec![],
            references: vec![],
            from: None,
            to: to
                .iter()
                .map(|e| Mailbox {
                    email: e.to_lowercase(),
                    name: None,
                })
                .collect(),
            cc: vec![],
            reply_to: vec![],
            delivered_to: delivered.iter().map(|s| s.to_string()).collect(),
            subject: subject.into(),
            date: None,
            text: String::new(),
            full_text: String::new(),
            html: None,
            attachments: vec![],
            kind: MailKind::Normal,
            headers_raw_size: 0,
            authentication_results: vec![],
            from_mailboxes: 0,
        }
    }

    #[test]
    fn reply_address() {
        assert_eq!(
            reply_to_address("help@shop.example", "abc123"),
            "help+c-abc123@shop.example"
        );
        assert_eq!(
            reply_to_address("Help Desk <Help@Shop.example>", "ABC123"),
            "help+c-abc123@shop.example"
        );
        assert_eq!(reply_to_address("nonsense", "abc123"), "nonsense");
    }

    #[test]
    fn subject_token_once() {
        let s = subject_with_token("Your order", "abc123");
        assert_eq!(s, "Your order [#c-abc123]");
        assert_eq!(subject_with_token(&s, "abc123"), s);
        assert_eq!(
            subject_with_token("Re: Re: Your order [#C-ABC123]", "abc123"),
            "Re: Re: Your order [#C-ABC123]"
        );
        assert_eq!(
            subject_with_token("Re: Your order [#c-old999] [#c-abc123]", "abc123"),
            "Re: Your order [#c-abc123]"
        );
        assert_eq!(subject_with_token("", "abc123"), "[#c-abc123]");
    }

    #[test]
    fn find_token_in_addresses_and_subject() {
        let p = email(&["Help+C-AbC123@Shop.Example"], &[], "Hello");
        assert_eq!(
            find_token(&p, "help@shop.example").as_deref(),
            Some("abc123")
        );
        // Another domain in To does not count; an envelope recipient does.
        let p = email(&["help+c-abc123@other.example"], &[], "Hello");
        assert_eq!(find_token(&p, "help@shop.example"), None);
        let p = email(
            &["help@shop.example"],
            &["help+c-abc123@inbound.example"],
            "Hello",
        );
        assert_eq!(
            find_token(&p, "help@shop.example").as_deref(),
            Some("abc123")
        );
        let p = email(
            &["help@shop.example"],
            &[],
            "AW: SV: Re: Fwd: Your order [#c-abc123]",
        );
        assert_eq!(
            find_token(&p, "help@shop.example").as_deref(),
            Some("abc123")
        );
        let p = email(&["help@shop.example"], &[], "RE: your order [ #C-XYZ789 ]");
        assert_eq!(
            find_token(&p, "help@shop.example").as_deref(),
            Some("xyz789")
        );
        let p = email(
            &["help@shop.example"],
            &[],
            "Issue#c-abc123 and #c- and #c-ab",
        );
        assert_eq!(find_token(&p, "help@shop.example"), None);
    }

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_subject("Re: Fwd: AW: WG: SV: Antw: Your order"),
            "Your order"
        );
        assert_eq!(
            normalize_subject("RE : re:Re[2]: FW:  Your   order [#c-abc123]"),
            "Your order"
        );
        assert_eq!(normalize_subject("回复：订单"), "订单");
        assert_eq!(normalize_subject("Review: my mug"), "Review: my mug");
        assert_eq!(normalize_subject("Regarding order"), "Regarding order");
        assert_eq!(normalize_subject(""), "");
        assert!(is_forward_subject("Fwd: Re: Order"));
        assert!(is_forward_subject("WG: Bestellung"));
        assert!(!is_forward_subject("Re: Fwd: Order"));
        assert!(!is_forward_subject("Order"));
    }

    #[test]
    fn never_panics_on_odd_subjects() {
        let alphabet: Vec<char> = "#c-[] :：Re^2(3)日é0aZ@+<>D1".chars().collect();
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = normalize_subject(&s);
            let _ = subject_with_token(&s, "abc123");
            let _ = is_forward_subject(&s);
            let _ = is_amazon_relay(&s);
            let _ = amazon_order_id(&s, &s);
            let _ = reply_to_address(&s, "abc123");
            let _ = find_token(&email(&[s.as_str()], &[s.as_str()], &s), &s);
        }
    }

    #[test]
    fn amazon() {
        assert!(is_amazon_relay("x7k2m9q1abc@marketplace.amazon.com"));
        assert!(is_amazon_relay("Buyer <abc@Marketplace.Amazon.co.uk>"));
        assert!(is_amazon_relay("abc@marketplace.amazon.de"));
        assert!(!is_amazon_relay("abc@amazon.com"));
        assert!(!is_amazon_relay("abc@marketplace.amazon.com.evil.example"));
        assert!(!is_amazon_relay("@marketplace.amazon.com"));
        assert_eq!(
            amazon_order_id(
                "Inquiry from Amazon customer (Order: 302-1234567-7654321)",
                ""
            )
            .as_deref(),
            Some("302-1234567-7654321")
        );
        assert_eq!(
            amazon_order_id("Question", "my order D01-7654321-1234567 never came").as_deref(),
            Some("D01-7654321-1234567")
        );
        assert_eq!(
            amazon_order_id("1302-1234567-7654321", "302-1234567-76543210"),
            None
        );
        assert_eq!(
            amazon_order_id("", "ünïcode 111-2222222-3333333."),
            Some("111-2222222-3333333".into())
        );
    }
}
