//! Whether an inbound email's From address is proven or only claimed. A From header is written
//! by whoever sends the message, so it proves nothing by itself; it counts as proof only when a
//! mail relay we trust (its authserv-id listed in `[email] trusted_authserv_ids`) checked the
//! message and wrote so in an `Authentication-Results` header (RFC 8601): `dmarc=pass`, or
//! `dkim=pass` for a signing domain aligned with the From domain.
//!
//! Which header is believed: **only the topmost `Authentication-Results` header of the
//! message**, and only when its authserv-id is a trusted one. Relays prepend their trace
//! headers, so the topmost one is the last relay's — ours; anything below it may have been
//! written by the sender, who can put `Authentication-Results: <our relay>; dmarc=pass` in
//! their own message. A trusted header further down is never read, and a topmost header from
//! any other authserv-id proves nothing. This needs the trusted relay to add its header to
//! every message it hands over (RFC 8601 §5 also asks it to drop any that claim its id).
//!
//! Alignment is conservative: `dkim=pass` counts when `header.d` is the From domain or a
//! parent of it (`d=shop.example` for `From: a@mail.shop.example`), never a child or a
//! sibling (relaxed DMARC alignment also accepts those, but telling them apart safely needs the
//! public suffix list). `dmarc=pass` counts when its `header.from`, if given, is the From
//! domain. A message with more than one From mailbox proves nothing.
//!
//! The parser is small and strict: comments (nested), quoted strings, `;`-separated results of
//! `method[/version]=result` followed by `reason=` and `ptype.property=` pairs. Anything it does
//! not understand makes the whole header prove nothing. Pure: no I/O, never panics.

use super::parse::ParsedEmail;

/// Longest header value read; longer ones prove nothing.
const MAX_HEADER_CHARS: usize = 16 * 1024;
/// Deepest comment nesting read.
const MAX_COMMENT_DEPTH: usize = 8;

/// How a From address was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderProof {
    /// "dmarc" or "dkim".
    pub method: &'static str,
    /// The trusted relay that reported it.
    pub authserv_id: String,
}

/// Why a From address stays a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotProven {
    NoTrustedRelays,
    NoSingleFrom,
    NoAuthenticationResults,
    Unreadable,
    UntrustedRelay,
    NoPass,
}

impl NotProven {
    pub fn as_str(self) -> &'static str {
        match self {
            NotProven::NoTrustedRelays => "no_trusted_relays_configured",
            NotProven::NoSingleFrom => "not_exactly_one_from_mailbox",
            NotProven::NoAuthenticationResults => "no_authentication_results",
            NotProven::Unreadable => "unreadable_authentication_results",
            NotProven::UntrustedRelay => "topmost_authentication_results_not_from_a_trusted_relay",
            NotProven::NoPass => "no_aligned_pass",
        }
    }
}

/// Decides whether the message's From address is proven (see the module docs).
pub fn sender_proof(parsed: &ParsedEmail, trusted: &[String]) -> Result<SenderProof, NotProven> {
    let trusted: Vec<String> = trusted
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if trusted.is_empty() {
        return Err(NotProven::NoTrustedRelays);
    }
    let from_domain = match (&parsed.from, parsed.from_mailboxes) {
        (Some(from), 1) => from
            .email
            .rsplit_once('@')
            .map(|(_, d)| normalize_domain(d))
            .filter(|d| !d.is_empty())
            .ok_or(NotProven::NoSingleFrom)?,
        _ => return Err(NotProven::NoSingleFrom),
    };
    let topmost = parsed
        .authentication_results
        .first()
        .ok_or(NotProven::NoAuthenticationResults)?;
    let results = parse_header(topmost).ok_or(NotProven::Unreadable)?;
    if !trusted.contains(&results.authserv_id.to_ascii_lowercase()) {
        return Err(NotProven::UntrustedRelay);
    }
    let method = results
        .results
        .iter()
        .find_map(|r| proves(r, &from_domain))
        .ok_or(NotProven::NoPass)?;
    Ok(SenderProof {
        method,
        authserv_id: results.authserv_id,
    })
}

/// The method a result proves the From domain with, if it does.
fn proves(r: &ResInfo, from_domain: &str) -> Option<&'static str> {
    if !r.result.eq_ignore_ascii_case("pass") {
        return None;
    }
    match r.method.to_ascii_lowercase().as_str() {
        "dmarc" => match r.property("header.from") {
            Some(d) if normalize_domain(d) != from_domain => None,
            _ => Some("dmarc"),
        },
        "dkim" => {
            let d = normalize_domain(r.property("header.d")?);
            aligned(&d, from_domain).then_some("dkim")
        }
        _ => None,
    }
}

/// `signer` is the From domain or a parent of it, and has at least two labels.
fn aligned(signer: &str, from_domain: &str) -> bool {
    let labels_ok = signer.split('.').count() >= 2 && signer.split('.').all(|l| !l.is_empty());
    labels_ok
        && (signer == from_domain
            || from_domain
                .strip_suffix(signer)
                .is_some_and(|rest| rest.ends_with('.')))
}

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// One `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResults {
    pub authserv_id: String,
    pub results: Vec<ResInfo>,
}

/// One result: `method=result`, then `reason=` and `ptype.property=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResInfo {
    pub method: String,
    pub result: String,
    /// (lower-cased key, value) pairs, in order.
    pub properties: Vec<(String, String)>,
}

impl ResInfo {
    /// The first value of a property (`header.d`), case-insensitive key.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Equals,
    Semicolon,
}

/// Parses an `Authentication-Results` value (RFC 8601 §2.2); None when it does not follow the
/// grammar.
pub fn parse_header(value: &str) -> Option<AuthResults> {
    if value.len() > MAX_HEADER_CHARS {
        return None;
    }
    let tokens = tokenize(value)?;
    let mut segments = tokens.split(|t| *t == Token::Semicolon);
    let head = segments.next()?;
    let authserv_id = match head {
        [Token::Word(id)] => id.clone(),
        [Token::Word(id), Token::Word(version)] if version.chars().all(|c| c.is_ascii_digit()) => {
            id.clone()
        }
        _ => return None,
    };
    if authserv_id.is_empty() {
        return None;
    }
    let rest: Vec<&[Token]> = segments.collect();
    let mut results = Vec::new();
    for (i, segment) in rest.iter().enumerate() {
        match segment {
            // A trailing ";" leaves an empty last segment.
            [] if i + 1 == rest.len() && i > 0 => {}
            [Token::Word(none)] if none.eq_ignore_ascii_case("none") && rest.len() == 1 => {}
            _ => results.push(resinfo(segment)?),
        }
    }
    Some(AuthResults {
        authserv_id,
        results,
    })
}

/// `method[/version] = result *( key = value )`.
fn resinfo(segment: &[Token]) -> Option<ResInfo> {
    if segment.is_empty() || !segment.len().is_multiple_of(3) {
        return None;
    }
    let mut pairs = Vec::with_capacity(segment.len() / 3);
    for triple in segment.chunks(3) {
        match triple {
            [Token::Word(k), Token::Equals, Token::Word(v)] if !k.is_empty() => {
                pairs.push((k.to_ascii_lowercase(), v.clone()));
            }
            _ => return None,
        }
    }
    let mut pairs = pairs.into_iter();
    let (method, result) = pairs.next()?;
    let method = match method.split_once('/') {
        Some((m, version))
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit()) =>
        {
            m.to_string()
        }
        Some(_) => return None,
        None => method,
    };
    if method.contains('.') || result.is_empty() {
        return None;
    }
    let properties: Vec<(String, String)> = pairs.collect();
    if properties
        .iter()
        .any(|(k, _)| k != "reason" && !k.contains('.'))
    {
        return None;
    }
    Some(ResInfo {
        method,
        result,
        properties,
    })
}

/// Words, `=` and `;`, with comments dropped and quoted strings unquoted.
fn tokenize(value: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if !word.is_empty() {
            tokens.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut tokens);
                let mut depth = 1;
                while depth > 0 {
                    match chars.next()? {
                        '\\' => {
                            chars.next()?;
                        }
                        '(' => {
                            depth += 1;
                            if depth > MAX_COMMENT_DEPTH {
                                return None;
                            }
                        }
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            ')' => return None,
            '"' => {
                if !word.is_empty() {
                    return None;
                }
                let mut quoted = String::new();
                loop {
                    match chars.next()? {
                        '\\' => quoted.push(chars.next()?),
                        '"' => break,
                        c => quoted.push(c),
                    }
                }
                tokens.push(Token::Word(quoted));
            }
            '=' => {
                flush(&mut word, &mut tokens);
                tokens.push(Token::Equals);
            }
            ';' => {
                flush(&mut word, &mut tokens);
                tokens.push(Token::Semicolon);
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c if c.is_control() => return None,
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::email::parse;

    const TRUSTED: &str = "mx.relay.example";

    fn mail(from: &str, headers: &[&str]) -> ParsedEmail {
        let mut raw = String::new();
        for h in headers {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        raw.push_str(&format!(
            "From: {from}\r\nTo: help@shop.example\r\nSubject: hi\r\nMessage-ID: <a@b>\r\n\r\nhello\r\n"
        ));
        parse::parse(raw.as_bytes()).expect("parses")
    }

    fn proof(from: &str, headers: &[&str]) -> Result<SenderProof, NotProven> {
        sender_proof(&mail(from, headers), &[TRUSTED.to_string()])
    }

    #[test]
    fn reads_real_world_headers() {
        let gmail = "mx.google.com;\r\n       dkim=pass header.i=@example.com header.s=20230601 header.b=AbCdEf12;\r\n       spf=pass (google.com: domain of anya@example.com designates 209.85.220.41 as permitted sender) smtp.mailfrom=anya@example.com;\r\n       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com";
        let r = parse_header(&gmail.replace("\r\n", "")).expect("parses");
        assert_eq!(r.authserv_id, "mx.google.com");
        assert_eq!(r.results.len(), 3);
        assert_eq!(r.results[2].method, "dmarc");
        assert_eq!(r.results[2].property("header.from"), Some("example.com"));
        let ms = "spf=pass; dkim=pass";
        assert!(parse_header(ms).is_none(), "no authserv-id");
        let none = parse_header("mx.example.org 1; none").expect("parses");
        assert!(none.results.is_empty());
        let quoted =
            parse_header("\"mx.example.org\"; dkim/1=pass reason=\"good sig\" header.d=a.example;")
                .expect("parses");
        assert_eq!(quoted.results[0].method, "dkim");
        assert_eq!(quoted.results[0].property("reason"), Some("good sig"));
    }

    #[test]
    fn rejects_what_is_not_the_grammar() {
        for bad in [
            "",
            "mx.example.org; dmarc",
            "mx.example.org; dmarc=pass header.from",
            "mx.example.org; dmarc=pass (unclosed",
            "mx.example.org; dmarc=pass )",
            "mx.example.org extra words; dmarc=pass",
            "mx.example.org; dmarc=pass bogus=1",
            "mx.example.org; dmarc/x=pass",
            "mx.example.org; dmarc=\"pass",
            "mx.example.org; dm\"arc\"=pass",
        ] {
            assert!(parse_header(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn dmarc_pass_from_the_trusted_relay_proves() {
        let p = proof(
            "Anya <anya@example.com>",
            &[
                "Authentication-Results: mx.relay.example; spf=fail smtp.mailfrom=x.example;\r\n dmarc=pass (p=reject) header.from=example.com",
            ],
        );
        assert_eq!(p.map(|p| p.method), Ok("dmarc"));
        let p = proof(
            "anya@example.com",
            &["Authentication-Results: MX.Relay.Example; dmarc=pass"],
        );
        assert_eq!(p.map(|p| p.method), Ok("dmarc"));
    }

    #[test]
    fn dmarc_for_another_domain_does_not() {
        let p = proof(
            "anya@example.com",
            &["Authentication-Results: mx.relay.example; dmarc=pass header.from=evil.example"],
        );
        assert_eq!(p, Err(NotProven::NoPass));
    }

    #[test]
    fn a_forged_header_below_the_relays_own_is_not_read() {
        let p = proof(
            "anya@example.com",
            &[
                "Authentication-Results: mx.relay.example; dmarc=fail header.from=example.com",
                "Received: from attacker.example by mx.relay.example",
                "Authentication-Results: mx.relay.example; dmarc=pass header.from=example.com",
            ],
        );
        assert_eq!(p, Err(NotProven::NoPass));
        // An untrusted relay on top hides a trusted-looking header below it.
        let p = proof(
            "anya@example.com",
            &[
                "Authentication-Results: mx.other.example; dmarc=pass",
                "Authentication-Results: mx.relay.example; dmarc=pass",
            ],
        );
        assert_eq!(p, Err(NotProven::UntrustedRelay));
    }

    #[test]
    fn untrusted_relays_and_missing_config_prove_nothing() {
        let p = proof(
            "anya@example.com",
            &["Authentication-Results: mx.evil.example; dmarc=pass header.from=example.com"],
        );
        assert_eq!(p, Err(NotProven::UntrustedRelay));
        let m = mail(
            "anya@example.com",
            &["Authentication-Results: mx.relay.example; dmarc=pass"],
        );
        assert_eq!(sender_proof(&m, &[]), Err(NotProven::NoTrustedRelays));
        assert_eq!(
            proof("anya@example.com", &[]),
            Err(NotProven::NoAuthenticationResults)
        );
    }

    #[test]
    fn dkim_counts_only_when_aligned() {
        let with = |d: &str, from: &str| {
            proof(
                from,
                &[&format!(
                    "Authentication-Results: mx.relay.example; dkim=pass header.d={d} header.s=s1; dmarc=fail"
                )],
            )
            .map(|p| p.method)
        };
        assert_eq!(with("example.com", "a@example.com"), Ok("dkim"));
        assert_eq!(with("Example.COM.", "a@mail.example.com"), Ok("dkim"));
        assert_eq!(
            with("evil.example", "a@example.com"),
            Err(NotProven::NoPass)
        );
        assert_eq!(
            with("mail.example.com", "a@example.com"),
            Err(NotProven::NoPass)
        );
        assert_eq!(with("ample.com", "a@example.com"), Err(NotProven::NoPass));
        assert_eq!(with("com", "a@example.com"), Err(NotProven::NoPass));
        let p = proof(
            "a@example.com",
            &["Authentication-Results: mx.relay.example; dkim=fail header.d=example.com"],
        );
        assert_eq!(p, Err(NotProven::NoPass));
    }

    #[test]
    fn two_from_mailboxes_prove_nothing() {
        let p = proof(
            "anya@example.com, eve@evil.example",
            &["Authentication-Results: mx.relay.example; dmarc=pass header.from=example.com"],
        );
        assert_eq!(p, Err(NotProven::NoSingleFrom));
        let p = proof(
            "anya@example.com",
            &[
                "From: eve@evil.example",
                "Authentication-Results: mx.relay.example; dmarc=pass header.from=example.com",
            ],
        );
        assert_eq!(p, Err(NotProven::NoSingleFrom));
    }

    #[test]
    fn never_panics_on_odd_values() {
        let alphabet: Vec<char> = "ab.=;()\"\\ \t/dkimpass@é\u{1}".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..(seed % 60) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse_header(&s);
        }
        assert!(parse_header(&"(".repeat(100)).is_none());
    }
}
