//! The real-message corpus in `shared/data/eml` (see its SOURCE.md / MANIFEST.json): every file
//! parses without a panic, charsets / attachments / kinds / dates come out right, and every
//! talon fixture's quoted reply is stripped to its expected text.

use std::path::PathBuf;

use super::{MailKind, parse};
use crate::channels::email::quote::{strip_html_reply, strip_quotation};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/eml"))
}

fn read(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

fn read_text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap_or_else(|e| panic!("fixture {name} is not UTF-8: {e}"))
}

fn parsed(name: &str) -> super::ParsedEmail {
    parse(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const CHARSET_HINT: &str = "mail-parser decodes multi-byte legacy charsets (ISO-2022-JP, \
     Shift_JIS, EUC-KR, Big5) only with its `full_encoding` feature: Cargo.toml needs \
     `mail-parser = { version = \"0.11\", features = [\"full_encoding\"] }` (encoding_rs 0.8.44 \
     is already in Cargo.lock via axum → multer)";

#[test]
fn every_eml_parses() {
    let dir = dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list fixture dir {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("eml") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // No fixture is broken enough to be refused: all of them must parse.
        let p = parse(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(p.headers_raw_size > 0 && p.headers_raw_size <= raw.len());
        count += 1;
    }
    assert_eq!(count, 38, "expected the 38 .eml files in {}", dir.display());
}

#[test]
fn japanese_iso_2022_jp() {
    let p = parsed("mikel-mail__multi_charset__japanese_iso_2022.eml");
    // The subject is a UTF-8 encoded word; the body is ISO-2022-JP.
    assert_eq!(p.subject, "まみむめも");
    assert_eq!(p.to[0].name.as_deref(), Some("みける"));
    assert_eq!(p.full_text.trim(), "すみません。", "{CHARSET_HINT}");
    assert_eq!(p.text, "すみません。");
}

#[test]
fn japanese_shift_jis() {
    let p = parsed("mikel-mail__multi_charset__japanese_shift_jis.eml");
    assert!(
        p.full_text.starts_with("あいうえお"),
        "{CHARSET_HINT}: got {:?}",
        p.full_text
    );
    assert!(p.full_text.contains("このメールはテスト用のメールです。"));
    assert!(p.full_text.contains("今後ともよろしくお願い申し上げます！"));
}

#[test]
fn korean_euc_kr() {
    let p = parsed("mikel-mail__multi_charset__ks_c_5601-1987.eml");
    assert_eq!(p.full_text.trim(), "스티해", "{CHARSET_HINT}");
    let p = parsed("mikel-mail__plain_emails__raw_email.eml");
    assert_eq!(p.subject, "NOTE: 한국말로 하는 것", "{CHARSET_HINT}");
    assert!(
        p.full_text.starts_with("대부분의 마찬가지로"),
        "{CHARSET_HINT}"
    );
}

/// UTF-8 encoded words, Latin-1, windows-1252 and RFC 6532 UTF-8 headers need no feature.
#[test]
fn charsets_without_legacy_decoders() {
    let p = parsed("stalwart__thirdparty__010.eml");
    assert_eq!(p.subject, "こんにちは");
    let p = parsed("mikel-mail__rfc6532__utf8_headers.eml");
    assert_eq!(p.subject, "Säying Hello");
    let from = p.from.expect("from");
    assert_eq!(from.name.as_deref(), Some("Jöhn Doe"));
    assert_eq!(from.email, "jdöe@mächine.example");
    let p = parsed("mikel-mail__attachment_emails__attachment_pdf.eml");
    assert_eq!(p.subject, "Another PDF with 🎉 Unicode chars in it 🍿");
    let p = parsed("stalwart__thirdparty__019.eml");
    assert_eq!(p.full_text.trim(), "Search for hähä");
}

#[test]
fn attachments() {
    let p = parsed("mikel-mail__attachment_emails__attachment_nonascii_filename.eml");
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].filename.as_deref(), Some("ciële.txt"));
    assert_eq!(p.attachments[0].content_type, "text/plain");
    assert!(!p.attachments[0].inline);
    assert_eq!(p.text, "This is the first part.");

    let p = parsed("mikel-mail__attachment_emails__attachment_pdf.eml");
    assert_eq!(p.attachments.len(), 1);
    let pdf = &p.attachments[0];
    assert_eq!(pdf.filename.as_deref(), Some("broken.pdf"));
    assert_eq!(pdf.content_type, "application/pdf");
    assert_eq!(pdf.size, 1026);
    assert_eq!(pdf.data.len(), 1026);
    assert!(pdf.data.starts_with(b"%PDF"));

    let p = parsed("mikel-mail__attachment_emails__attachment_only_email.eml");
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].filename.as_deref(), Some("blah.gz"));
    assert_eq!(p.full_text, "");

    // An inline image (with Content-ID) and a nested message/rfc822.
    let p = parsed("mikel-mail__attachment_emails__attachment_message_rfc822_inline_image.eml");
    assert_eq!(p.attachments.len(), 2);
    let img = &p.attachments[0];
    assert_eq!(img.content_type, "image/png");
    assert!(img.inline);
    assert_eq!(
        img.content_id.as_deref(),
        Some("emedfeb92f-a786-4718-a446-98db8afb53fb@kronos")
    );
    let nested = &p.attachments[1];
    assert_eq!(nested.content_type, "message/rfc822");
    assert_eq!(nested.filename.as_deref(), Some("Testmail.eml"));
    assert!(parse(&nested.data).is_ok());

    // Unnamed nested message → "forwarded.eml".
    let p = parsed("stalwart__rfc__002.eml");
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].filename.as_deref(), Some("forwarded.eml"));
    assert_eq!(p.attachments[0].content_type, "message/rfc822");

    // S/MIME: the signature is an attachment, the body text is kept.
    let p = parsed("mikel-mail__mime_emails__raw_email_with_nested_attachment.eml");
    let names: Vec<_> = p
        .attachments
        .iter()
        .filter_map(|a| a.filename.as_deref())
        .collect();
    assert_eq!(names, ["truncated.png", "smime.p7s"]);
    assert!(
        p.text
            .starts_with("Here is a test of an attachment via email.")
    );
}

#[test]
fn bounce_and_auto_reply() {
    let p = parsed("mikel-mail__multipart_report_emails__multi_address_bounce1.eml");
    assert_eq!(p.kind, MailKind::Bounce);
    // Precedence: junk.
    let p = parsed("mikel-mail__error_emails__bad_date_header.eml");
    assert_eq!(p.kind, MailKind::AutoReply);
    for name in [
        "talon__gmail.eml",
        "stalwart__thirdparty__015.eml",
        "mikel-mail__plain_emails__basic_email.eml",
    ] {
        assert_eq!(parsed(name).kind, MailKind::Normal, "{name}");
    }
}

#[test]
fn html_only_message_becomes_text() {
    let p = parsed("stalwart__thirdparty__016.eml");
    assert!(p.html.as_deref().is_some_and(|h| h.contains("<tt>")));
    assert_eq!(p.full_text, "Search for höhö");
    assert_eq!(p.text, "Search for höhö");
    let p = parsed("mikel-mail__error_emails__content_transfer_encoding_empty.eml");
    assert!(!p.full_text.is_empty());
    assert!(
        !p.full_text.contains('<') && !p.full_text.contains("font"),
        "{}",
        p.full_text
    );
}

#[test]
fn dates() {
    // "Date:" with an empty value.
    assert_eq!(
        parsed("mikel-mail__error_emails__bad_date_header.eml").date,
        None
    );
    // Year 3609.
    assert_eq!(
        parsed("mikel-mail__plain_emails__raw_email_bad_time.eml").date,
        None
    );
    // No Date header.
    assert_eq!(parsed("talon__outlook.eml").date, None);
    // Mon, 2 Apr 2012 20:21:52 +0400
    assert_eq!(parsed("talon__gmail.eml").date, Some(1_333_383_712_000));
}

#[test]
fn ids_and_addresses() {
    let p = parsed("talon__apple_mail_2.eml");
    assert_eq!(
        p.message_id.as_deref(),
        Some("68001B29-8EA4-444C-A894-0537D2CA5208@tictail.com")
    );
    assert_eq!(
        p.in_reply_to,
        ["CABzQGhkMXDxUt_tSVQcg=43aniUhtsVfCZVzu-PG0kwS_uzqMw@mail.gmail.com"]
    );
    assert_eq!(p.references, p.in_reply_to);
    assert_eq!(
        p.from.as_ref().map(|m| m.email.as_str()),
        Some("adam@tictail.com")
    );
    assert_eq!(p.to[0].email, "tgwizard@gmail.com");
    let p = parsed("mikel-mail__multipart_report_emails__multi_address_bounce1.eml");
    assert_eq!(
        p.from.map(|m| m.email),
        Some("mailer-daemon@lvmail01.ll.com".to_string())
    );
}

#[test]
fn shop_reply_signature_is_stripped() {
    let p = parsed("stalwart__thirdparty__015.eml");
    assert!(p.text.starts_with("Hallo Stoiko,"));
    assert!(p.text.ends_with("Beste Grüße"), "{}", p.text);
    assert!(p.full_text.contains("Inhaber | ProxForge"));
    assert_eq!(
        p.attachments[0].filename.as_deref(),
        Some("training-mail.txt")
    );
}

/// talon standard replies: the quotation stripped from the first text/plain part is exactly
/// "Hello", or the `<name>_reply_text` file; with signatures also stripped, "Hello" for all.
#[test]
fn talon_standard_replies() {
    let cases = [
        "android",
        "aol",
        "apple_mail",
        "apple_mail_2",
        "comcast",
        "gmail",
        "hotmail",
        "iphone",
        "outlook",
        "sparrow",
        "thunderbird",
        "yahoo",
    ];
    let mut failures = Vec::new();
    for name in cases {
        let p = parsed(&format!("talon__{name}.eml"));
        let expected = match name {
            "iphone" | "sparrow" => read_text(&format!("talon__{name}_reply_text")),
            _ => "Hello".to_string(),
        };
        let got = strip_quotation(&p.full_text);
        if norm(&got) != norm(&expected) {
            failures.push(format!(
                "{name}: strip_quotation gave {got:?}, expected {expected:?}"
            ));
        }
        if p.text.trim() != "Hello" {
            failures.push(format!("{name}: text is {:?}, expected \"Hello\"", p.text));
        }
        // The HTML alternative, where there is one, agrees (outlook's HTML part really says
        // something else than its text part).
        if let Some(html) = &p.html {
            let from_html = strip_html_reply(html);
            let want = if name == "outlook" {
                "Allo! Follow up MIME!"
            } else {
                "Hello"
            };
            if from_html.trim() != want {
                failures.push(format!("{name}: strip_html_reply gave {from_html:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn talon_share_block() {
    let p = parsed("talon__reply-quotations-share-block.eml");
    let expected = "Hi Katharine.\u{a0} Sounds great.\u{a0} Are there and dietry restrictions or \
        things your husband does/doesn't like to eat?\u{a0} Would you like to do a few hors d \
        oeuvres and then a\u{a0}3 or 4\u{a0}course dinner?\u{a0} Let me know what you think will \
        work best and I will start working on a menu and proposal.\u{a0} Thanks so much and look \
        forward to hearing from you soon.\n\u{a0}\nJoe XXX";
    assert_eq!(strip_quotation(&p.full_text), expected);
    assert_eq!(p.text, expected);
    assert!(!p.text.contains("From"));
    let html = strip_html_reply(p.html.as_deref().unwrap_or_default());
    assert!(
        html.starts_with("Hi Katharine.") && html.ends_with("Jhon Doe"),
        "{html}"
    );
}

#[test]
fn talon_html_replies() {
    let expected = norm(&read_text("talon_html_reply_bodies/EXPECTED_REPLY.txt"));
    let mut failures = Vec::new();
    for name in [
        "gmail",
        "hotmail",
        "mail_ru",
        "ms_outlook_2003",
        "ms_outlook_2007",
        "ms_outlook_2010",
        "thunderbird",
        "windows_mail",
        "yandex_ru",
    ] {
        let html = read_text(&format!("talon_html_reply_bodies/{name}.html"));
        let got = strip_html_reply(&html);
        if norm(&got) != expected {
            failures.push(format!("{name}: got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "expected {expected:?}\n{}",
        failures.join("\n")
    );
}
