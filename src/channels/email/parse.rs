//! Inbound email understanding: one raw RFC 822 / MIME message (bytes) into a [`ParsedEmail`] —
//! ids for threading, decoded addresses and subject, the date, the body as plain text with the
//! author's new text separated from quoted history ([`super::quote`]), attachments (nested
//! messages included) and whether it is a human message, an auto-reply or a bounce.
//!
//! Pure: no I/O, no database, never panics on any input (malformed MIME still parses as far as
//! mail-parser gets; only input without any header is an error). Charset decoding is
//! mail-parser's: the multi-byte legacy charsets (ISO-2022-JP, Shift_JIS, EUC-KR, Big5, …)
//! decode only when its `full_encoding` feature is on.

use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};

use super::quote;
use super::thread;

/// A decoded address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Lower-cased address.
    pub email: String,
    /// Decoded display name, `None` when absent or empty.
    pub name: Option<String>,
}

/// A file carried by the message (including inline images and nested messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Decoded file name (RFC 2047 / RFC 2231); "forwarded.eml" for an unnamed nested message.
    pub filename: Option<String>,
    /// Lower-cased "type/subtype".
    pub content_type: String,
    /// `data.len()`.
    pub size: usize,
    /// Content-ID without angle brackets.
    pub content_id: Option<String>,
    /// Content-Disposition inline, or no disposition but a Content-ID (an embedded image).
    pub inline: bool,
    /// Decoded bytes (transfer encoding removed). Text parts are transcoded to UTF-8; a nested
    /// message is its raw RFC 822 bytes.
    pub data: Vec<u8>,
}

/// What kind of sender wrote the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    /// A person: answer it.
    Normal,
    /// Vacation responders, read receipts, bulk/junk mail: record, never answer.
    AutoReply,
    /// Delivery status notifications: record, never answer.
    Bounce,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Normal => "normal",
            MailKind::AutoReply => "auto_reply",
            MailKind::Bounce => "bounce",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEmail {
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// In-Reply-To ids without brackets.
    pub in_reply_to: Vec<String>,
    /// References ids without brackets, oldest first.
    pub references: Vec<String>,
    pub from: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    /// Envelope recipients from Delivered-To / X-Original-To / Envelope-To / X-Envelope-To,
    /// lower-cased (where a plus-address token survives when To/Cc were rewritten).
    pub delivered_to: Vec<String>,
    /// Decoded subject, "" when absent.
    pub subject: String,
    /// Epoch milliseconds; `None` when absent or unparseable.
    pub date: Option<i64>,
    /// The author's new text: quoted history and signature stripped. Empty when the message only
    /// quotes (e.g. an accidental empty reply); see `full_text`. A forward (subject "Fwd:",
    /// "WG:", …) keeps the forwarded content.
    pub text: String,
    /// The whole plain-text body (the HTML body converted when there is no text/plain part).
    pub full_text: String,
    /// The HTML body, if any.
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub kind: MailKind,
    /// Bytes of the top-level header block.
    pub headers_raw_size: usize,
    /// Raw values of the top-level `Authentication-Results` headers (RFC 8601), unfolded, in
    /// header order: the topmost (the last relay's) first. See [`super::auth`].
    pub authentication_results: Vec<String>,
    /// Mailboxes across all top-level From headers (proof of a sender needs exactly one).
    pub from_mailboxes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("empty message")]
    Empty,
    #[error("not an email: no headers")]
    NoHeaders,
    #[error("not an email: its MIME structure cannot be read")]
    Malformed,
    #[error(
        "not an email: none of From, To, Subject, Date, Message-ID, MIME-Version or Content-Type"
    )]
    NoMailHeaders,
}

/// Parses one raw message.
pub fn parse(raw: &[u8]) -> Result<ParsedEmail, EmailError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(EmailError::Empty);
    }
    // mail-parser asserts on some malformed nestings (in builds with debug assertions, which
    // the fuzzers and tests use); a message it cannot read is refused, never a crash.
    let message = std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .map_err(|_| EmailError::Malformed)?
        .ok_or(EmailError::NoHeaders)?;
    let root = message.parts.first().ok_or(EmailError::NoHeaders)?;
    if root.headers.is_empty() {
        return Err(EmailError::NoHeaders);
    }
    const MAIL_HEADERS: &[&str] = &[
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "received",
        "return-path",
        "sender",
        "in-reply-to",
    ];
    if !root.headers.iter().any(|h| {
        MAIL_HEADERS
            .iter()
            .any(|m| h.name.as_str().eq_ignore_ascii_case(m))
    }) {
        return Err(EmailError::NoMailHeaders);
    }

    let subject = message
        .subject()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let from = message.from().into_iter().flat_map(mailboxes).next();
    let from_headers = root
        .headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case("from"))
        .count();
    let from_mailboxes = if from_headers == 1 {
        message.from().map_or(0, |a| a.iter().count())
    } else {
        from_headers
    };
    let authentication_results = raw_header_values(&message, &["authentication-results"])
        .iter()
        .map(|v| unfold(v))
        .collect();
    let to = message
        .header_values("To")
        .filter_map(HeaderValue::as_address)
        .flat_map(mailboxes)
        .collect();
    let cc = message
        .header_values("Cc")
        .filter_map(HeaderValue::as_address)
        .flat_map(mailboxes)
        .collect();
    let reply_to = message
        .header_values("Reply-To")
        .filter_map(HeaderValue::as_address)
        .flat_map(mailboxes)
        .collect();
    let delivered_to = raw_header_values(
        &message,
        &[
            "delivered-to",
            "x-original-to",
            "envelope-to",
            "x-envelope-to",
        ],
    )
    .iter()
    .filter_map(|v| bare_address(v))
    .collect();

    let date = message
        .date()
        .filter(|d| d.is_valid())
        .and_then(|d| d.to_timestamp().checked_mul(1000));

    let (plain, html) = bodies(&message);
    let full_text = if !plain.trim().is_empty() {
        plain.clone()
    } else {
        html.as_deref().map(quote::html_to_text).unwrap_or_default()
    };
    let text = if thread::is_forward_subject(&subject) {
        full_text.trim().to_string()
    } else if !plain.trim().is_empty() {
        quote::strip_reply(&plain)
    } else {
        html.as_deref()
            .map(quote::strip_html_reply)
            .unwrap_or_default()
    };

    let attachments = message
        .attachments
        .iter()
        .filter_map(|id| message.parts.get(*id as usize))
        .filter_map(attachment)
        .collect();
    let kind = kind(&message, from.as_ref(), &subject);

    Ok(ParsedEmail {
        message_id: message.message_id().and_then(clean_id),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        from,
        to,
        cc,
        reply_to,
        delivered_to,
        subject,
        date,
        text,
        full_text,
        html,
        attachments,
        kind,
        headers_raw_size: (root.offset_body as usize).min(raw.len()),
        authentication_results,
        from_mailboxes,
    })
}

/// A folded header value on one line: CR/LF removed, so each fold leaves its whitespace.
fn unfold(value: &str) -> String {
    value.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn mailboxes(address: &Address<'_>) -> Vec<Mailbox> {
    address
        .iter()
        .filter_map(|a| {
            let email = bare_address(a.address()?)?;
            let name = a
                .name()
                .map(|n| n.trim().trim_matches('"').trim().to_string())
                .filter(|n| !n.is_empty());
            Some(Mailbox { email, name })
        })
        .collect()
}

/// "<Help+c-x@Shop.example>" → "help+c-x@shop.example".
fn bare_address(value: &str) -> Option<String> {
    let v = value.trim();
    let v = match (v.rfind('<'), v.rfind('>')) {
        (Some(l), Some(r)) if l < r => &v[l + 1..r],
        _ => v,
    };
    let v = v.trim().trim_matches(['<', '>']).trim();
    (!v.is_empty()).then(|| v.to_lowercase())
}

fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => clean_id(t).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|t| clean_id(t)).collect(),
        _ => Vec::new(),
    }
}

/// Raw (undecoded, trimmed) values of the named top-level headers.
fn raw_header_values(message: &Message<'_>, names: &[&str]) -> Vec<String> {
    let Some(root) = message.parts.first() else {
        return Vec::new();
    };
    root.headers
        .iter()
        .filter(|h| {
            names
                .iter()
                .any(|n| h.name.as_str().eq_ignore_ascii_case(n))
        })
        .filter_map(|h| {
            message
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)
        })
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_string())
        .collect()
}

/// The plain-text body (all text/plain body parts) and the HTML body, CRLF normalized.
fn bodies(message: &Message<'_>) -> (String, Option<String>) {
    let collect = |ids: &[u32], want_html: bool| -> String {
        let mut out = String::new();
        for part in ids.iter().filter_map(|id| message.parts.get(*id as usize)) {
            let body = match (&part.body, want_html) {
                (PartType::Text(t), false) | (PartType::Html(t), true) => t,
                _ => continue,
            };
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(body);
        }
        out.replace("\r\n", "\n").replace('\r', "\n")
    };
    let plain = collect(&message.text_body, false);
    let html = collect(&message.html_body, true);
    (plain, (!html.trim().is_empty()).then_some(html))
}

fn attachment(part: &mail_parser::MessagePart<'_>) -> Option<Attachment> {
    if matches!(part.body, PartType::Multipart(_)) {
        return None;
    }
    let content_type = part
        .content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .unwrap_or_else(|| {
            match part.body {
                PartType::Message(_) => "message/rfc822",
                PartType::Text(_) => "text/plain",
                PartType::Html(_) => "text/html",
                _ => "application/octet-stream",
            }
            .to_string()
        })
        .to_ascii_lowercase();
    let filename = part
        .attachment_name()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| part.is_message().then(|| "forwarded.eml".to_string()));
    let content_id = part.content_id().and_then(clean_id);
    let inline = match part.content_disposition() {
        Some(d) if d.is_inline() => true,
        Some(d) if d.is_attachment() => false,
        _ => content_id.is_some() || matches!(part.body, PartType::InlineBinary(_)),
    };
    let data = part.contents().to_vec();
    Some(Attachment {
        filename,
        content_type,
        size: data.len(),
        content_id,
        inline,
        data,
    })
}

/// Bounce and auto-reply detection. Mailing-list headers (List-Id, Precedence: list) do not
/// count: a support address that is a Google Group adds them to every customer's mail.
fn kind(message: &Message<'_>, from: Option<&Mailbox>, subject: &str) -> MailKind {
    let subject_lc = subject.to_lowercase();
    let from_local = from
        .and_then(|m| m.email.split('@').next())
        .unwrap_or_default();
    let root_type = message.content_type();
    let is_report = root_type.is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let report_type = root_type
        .and_then(|ct| ct.attribute("report-type"))
        .unwrap_or("")
        .to_ascii_lowercase();
    let has_dsn_part = message.parts.iter().any(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    });
    const BOUNCE_SUBJECTS: &[&str] = &[
        "delivery status notification",
        "undeliverable",
        "undelivered mail",
        "mail delivery failed",
        "delivery failure",
        "delivery has failed",
        "returned mail",
        "failure notice",
        "nicht zustellbar",
        "non remis",
        "no se puede entregar",
    ];
    let bounce = (is_report && (report_type.is_empty() || report_type == "delivery-status"))
        || has_dsn_part
        || from_local == "mailer-daemon"
        || from_local == "postmaster"
        || !raw_header_values(message, &["x-failed-recipients"]).is_empty()
        || BOUNCE_SUBJECTS.iter().any(|s| subject_lc.contains(s));
    if bounce {
        return MailKind::Bounce;
    }

    let auto_submitted = raw_header_values(message, &["auto-submitted"])
        .iter()
        .any(|v| {
            let v = v.to_ascii_lowercase();
            let v = v.split(';').next().unwrap_or("").trim();
            !v.is_empty() && v != "no"
        });
    let autoreply_header = !raw_header_values(
        message,
        &[
            "x-autoreply",
            "x-autorespond",
            "x-autoresponder",
            "x-autogenerated",
            "x-autoreply-from",
            "x-mail-autoreply",
        ],
    )
    .is_empty();
    let precedence = raw_header_values(message, &["precedence"]).iter().any(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "bulk" | "junk" | "auto_reply" | "auto-reply"
        )
    });
    let null_return_path = raw_header_values(message, &["return-path"])
        .iter()
        .any(|v| v.trim() == "<>");
    const AUTO_SUBJECTS: &[&str] = &[
        "automatic reply",
        "auto-reply",
        "autoreply",
        "auto reply",
        "out of office",
        "abwesenheitsnotiz",
        "automatische antwort",
        "réponse automatique",
        "respuesta automática",
    ];
    let auto_subject = AUTO_SUBJECTS.iter().any(|s| subject_lc.starts_with(s));
    if auto_submitted
        || autoreply_header
        || precedence
        || null_return_path
        || auto_subject
        || (is_report && report_type == "disposition-notification")
    {
        return MailKind::AutoReply;
    }
    MailKind::Normal
}

#[cfg(test)]
#[path = "tests/fixtures.rs"]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_clear() {
        assert_eq!(parse(b"").unwrap_err().to_string(), "empty message");
        assert_eq!(parse(b" \r\n\t").unwrap_err(), EmailError::Empty);
        for garbage in [
            &b"just some words without any header line"[..],
            b"\x00\xff\xfe",
            b"{\"json\": true}",
        ] {
            let err = parse(garbage).unwrap_err();
            assert!(err.to_string().starts_with("not an email"), "{err}");
        }
        assert!(
            parse(b"Note: buy milk\n\nand eggs")
                .unwrap_err()
                .to_string()
                .starts_with("not an email")
        );
    }

    #[test]
    fn minimal_message() {
        let raw = b"From: \"Jane Doe\" <Jane.Doe@Example.COM>\r\nTo: help+c-abc123@shop.example, Bob <bob@x.example>\r\nSubject: =?UTF-8?B?V2hlcmUgaXMgbXkgb3JkZXI/?=\r\nMessage-ID: <m1@example.com>\r\nIn-Reply-To: <p1@shop.example>\r\nReferences: <p0@shop.example> <p1@shop.example>\r\nDate: Tue, 5 Mar 2024 10:00:00 +0000\r\n\r\nHi,\r\nwhere is it?\r\n\r\nOn Mon, 4 Mar 2024 at 09:00, Shop <help@shop.example> wrote:\r\n> Thanks for your order\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(p.message_id.as_deref(), Some("m1@example.com"));
        assert_eq!(p.in_reply_to, ["p1@shop.example"]);
        assert_eq!(p.references, ["p0@shop.example", "p1@shop.example"]);
        let from = p.from.unwrap();
        assert_eq!(from.email, "jane.doe@example.com");
        assert_eq!(from.name.as_deref(), Some("Jane Doe"));
        assert_eq!(p.to.len(), 2);
        assert_eq!(p.to[0].email, "help+c-abc123@shop.example");
        assert_eq!(p.subject, "Where is my order?");
        assert_eq!(p.date, Some(1_709_632_800_000));
        assert_eq!(p.text, "Hi,\nwhere is it?");
        assert!(p.full_text.contains("Thanks for your order"));
        assert_eq!(p.kind, MailKind::Normal);
        assert!(p.headers_raw_size > 100 && p.headers_raw_size < raw.len());
    }

    #[test]
    fn kinds() {
        let auto = b"From: a@x.example\r\nAuto-Submitted: auto-replied\r\nSubject: Hi\r\n\r\nAway";
        assert_eq!(parse(auto).unwrap().kind, MailKind::AutoReply);
        let no = b"From: a@x.example\r\nAuto-Submitted: no\r\nSubject: Hi\r\n\r\nHello";
        assert_eq!(parse(no).unwrap().kind, MailKind::Normal);
        let ooo = b"From: a@x.example\r\nSubject: Automatic reply: Your order\r\n\r\nAway";
        assert_eq!(parse(ooo).unwrap().kind, MailKind::AutoReply);
        let list = b"From: a@x.example\r\nPrecedence: list\r\nList-Id: <support.shop.example>\r\nSubject: Help\r\n\r\nHello";
        assert_eq!(parse(list).unwrap().kind, MailKind::Normal);
        let daemon = b"From: MAILER-DAEMON@mx.example\r\nSubject: Hi\r\n\r\nfailed";
        assert_eq!(parse(daemon).unwrap().kind, MailKind::Bounce);
        let dsn =
            b"From: x@mx.example\r\nSubject: Delivery Status Notification (Failure)\r\n\r\nfailed";
        assert_eq!(parse(dsn).unwrap().kind, MailKind::Bounce);
    }

    #[test]
    fn forward_keeps_forwarded_content() {
        let raw = b"From: a@x.example\r\nSubject: Fwd: Your order 1001\r\n\r\nSee below\r\n\r\n-----Original Message-----\r\nFrom: Shop\r\nSent: Monday\r\nTo: a\r\nSubject: Your order 1001\r\n\r\n2x Mug\r\n";
        let p = parse(raw).unwrap();
        assert!(p.text.contains("2x Mug"), "{}", p.text);
    }

    /// Random bytes and mutated real messages never panic.
    #[test]
    fn never_panics() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seeds: Vec<Vec<u8>> = vec![
            b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/html; charset=iso-2022-jp\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: =?utf-8?q?n=C3=A9?=\r\n\r\nbody\r\n--x--\r\n".to_vec(),
            b"Subject: =?iso-8859-1?Q?caf=E9?=\nDate: Mon, 99 Foo 2024 25:61:61 +9999\nFrom: <>\n\n> q\n".to_vec(),
        ];
        for i in 0..4000 {
            let mut data = if i % 4 == 0 {
                (0..next() % 300).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                seeds[i % seeds.len()].clone()
            };
            if !data.is_empty() {
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % data.len();
                    match next() % 3 {
                        0 => data[at] = next() as u8,
                        1 => data.truncate(at),
                        _ => data.insert(at, b"<>:=\r\n-?"[(next() % 8) as usize]),
                    }
                    if data.is_empty() {
                        break;
                    }
                }
            }
            let _ = parse(&data);
        }
    }
}
