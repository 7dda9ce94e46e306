//! Tests of the entity rules, on hand-written cases and on the Bitext rows tagged `order_id`.

use std::path::Path;

use super::super::BITEXT_CSV;
use super::super::dataset::read_bitext_rows;
use super::*;

fn orders(text: &str) -> Vec<String> {
    extract(text).order_numbers
}

#[test]
fn order_numbers_with_hash_letters_and_order_words() {
    assert_eq!(orders("where is my order #W2611340"), vec!["#W2611340"]);
    assert_eq!(orders("has #w2611340 shipped yet?"), vec!["#W2611340"]);
    assert_eq!(orders("return #1001 please"), vec!["#1001"]);
    assert_eq!(orders("order W2611340 is late"), vec!["#W2611340"]);
    assert_eq!(orders("my order number is 2611340"), vec!["#2611340"]);
    assert_eq!(orders("order no. 1001 and 1002"), vec!["#1001", "#1002"]);
    assert_eq!(
        orders("orders #W1234567, #W7654321"),
        vec!["#W1234567", "#W7654321"]
    );
    assert_eq!(orders("cancel purchase 00004587345?"), vec!["#00004587345"]);
    assert_eq!(orders("track #D1234567"), vec!["#D1234567"]);
    assert_eq!(
        orders("when will #1001 arrive? is #1002 ok"),
        vec!["#1001", "#1002"]
    );
    assert_eq!(
        orders("cancelling order732201349959"),
        vec!["#732201349959"]
    );
    // Bare digits need an order word; quantities and other numbers are not order numbers.
    assert!(orders("I paid 2611340 dollars").is_empty());
    assert!(orders("I ordered 2 shirts and 1001 stickers").is_empty());
    assert!(orders("order 12 mugs").is_empty());
    assert!(orders("my zip is 62704").is_empty());
    assert!(orders("call me at 5551234567").is_empty());
    assert!(orders("I live at 12 Oak St Apt #5, Austin, TX 78701").is_empty());
    assert!(orders("invoice #12588").is_empty());
    assert!(orders("").is_empty());
}

#[test]
fn emails_are_lowercased_and_not_other_entities() {
    let e = extract("My email is Noah.Brown+shop@Example.COM, or noah99101@mail.org.");
    assert_eq!(
        e.emails,
        vec!["noah.brown+shop@example.com", "noah99101@mail.org"]
    );
    assert!(
        e.zip_codes.is_empty(),
        "digits in an email are no ZIP: {:?}",
        e.zip_codes
    );
    assert!(extract("reach me @ home or at a@b").emails.is_empty());
}

#[test]
fn zip_codes() {
    assert_eq!(extract("my zip is 62704").zip_codes, vec!["62704"]);
    assert_eq!(extract("zip code: 62704-1234").zip_codes, vec!["62704"]);
    assert_eq!(
        extract("postal code 10001, name Mei Kovacs").zip_codes,
        vec!["10001"]
    );
    // Near "zip" first.
    assert_eq!(
        extract("I have 12345 points, zip 94110").zip_codes,
        vec!["94110", "12345"]
    );
    // Not part of an order number, a longer number, money or an email.
    assert!(extract("order #62704").zip_codes.is_empty());
    assert!(extract("order 62704 is late").zip_codes.is_empty());
    assert!(extract("#W6270412").zip_codes.is_empty());
    assert!(extract("tracking 1234562704").zip_codes.is_empty());
    assert!(extract("it cost $12345").zip_codes.is_empty());
    assert!(extract("12345 dollars is a lot").zip_codes.is_empty());
    assert!(extract("size 10, 2 pairs").zip_codes.is_empty());
}

#[test]
fn tracking_numbers() {
    assert_eq!(
        extract("UPS says 1Z999AA10123456784 is delayed").tracking_numbers,
        vec!["1Z999AA10123456784"]
    );
    assert_eq!(
        extract("usps 9400111899223456789012 not moving").tracking_numbers,
        vec!["9400111899223456789012"]
    );
    assert_eq!(
        extract("my tracking number is 123456789012").tracking_numbers,
        vec!["123456789012"]
    );
    assert_eq!(
        extract("fedex tracking: 123456789012345").tracking_numbers,
        vec!["123456789012345"]
    );
    assert_eq!(
        extract("DHL 1234567890 is stuck").tracking_numbers,
        vec!["1234567890"]
    );
    assert_eq!(
        extract("My tracking is 9400 1000 0000 0000 0000 00").tracking_numbers,
        vec!["9400100000000000000000"]
    );
    assert!(extract("call 415 555 1234").tracking_numbers.is_empty());
    let e = extract("tracking order 732201349959");
    assert!(e.tracking_numbers.is_empty());
    assert_eq!(e.order_numbers, vec!["#732201349959"]);
    assert!(
        extract("my number is 123456789012")
            .tracking_numbers
            .is_empty()
    );
}

#[test]
fn names() {
    assert_eq!(
        extract("my name is John Smith").names,
        vec![("John".into(), "Smith".into())]
    );
    assert_eq!(
        extract("hi, I'm Yusuf Rossi and my zip is 19122").names,
        vec![("Yusuf".into(), "Rossi".into())]
    );
    assert_eq!(
        extract("This is Noah Brown.").names,
        vec![("Noah".into(), "Brown".into())]
    );
    assert_eq!(
        extract("my name is mei kovacs").names,
        vec![("Mei".into(), "Kovacs".into())]
    );
    assert_eq!(
        extract("My name is Mary Ann Smith-Jones").names,
        vec![("Mary".into(), "Smith-Jones".into())]
    );
    assert!(extract("I'm looking for boots").names.is_empty());
    assert!(extract("I'm Looking For Boots").names.is_empty());
    assert!(extract("this is ridiculous").names.is_empty());
    assert!(extract("I am very upset").names.is_empty());
    assert!(extract("my name is on the order").names.is_empty());
}

#[test]
fn yes_and_no() {
    for t in [
        "yes",
        "Yes please",
        "yep",
        "sure, go ahead",
        "confirm",
        "ok do it",
        "That's correct.",
        "Yeah that works",
    ] {
        let e = extract(t);
        assert!(e.yes && !e.no, "{t}: yes={} no={}", e.yes, e.no);
    }
    for t in [
        "no",
        "no thanks",
        "Nope.",
        "don't",
        "don't do it",
        "cancel that",
        "wait",
        "Hold on, not yet",
        "please don't",
    ] {
        let e = extract(t);
        assert!(e.no && !e.yes, "{t}: yes={} no={}", e.yes, e.no);
    }
    for t in [
        "where is my order",
        "I no longer need it",
        "how do I do it?",
        "I don't know my order number",
        "there's no tracking info",
        "I can't wait to get it",
        "please cancel that order",
    ] {
        let e = extract(t);
        assert!(!e.yes && !e.no, "{t}: yes={} no={}", e.yes, e.no);
    }
    let e = extract("yes, I don't need it anymore");
    assert!(e.yes && !e.no);
    // The last clause that decides wins.
    for (t, yes, no) in [
        ("ok but actually wait", false, true),
        ("yes. no wait", false, true),
        ("no, go ahead", true, false),
        ("nope, that's right, go ahead", true, false),
        ("please, I need a person", false, false),
    ] {
        let e = extract(t);
        assert_eq!((e.yes, e.no), (yes, no), "{t}");
    }
}

#[test]
fn cancel_reasons() {
    let needed = Some("no longer needed".to_string());
    let mistake = Some("ordered by mistake".to_string());
    assert_eq!(extract("no longer needed").reason, needed);
    assert_eq!(extract("I don't need it anymore").reason, needed);
    assert_eq!(extract("changed my mind, cancel it").reason, needed);
    assert_eq!(extract("found it cheaper elsewhere").reason, needed);
    assert_eq!(extract("bought by mistake").reason, mistake);
    assert_eq!(
        extract("I ordered the wrong one by accident").reason,
        mistake
    );
    assert_eq!(extract("accidentally ordered two").reason, mistake);
    assert_eq!(
        extract("cancel #W2611340, I didn't mean to order it").reason,
        mistake
    );
    assert_eq!(extract("cancel my order").reason, None);
    assert_eq!(extract("I need it by Friday").reason, None);
}

#[test]
fn payment_hints() {
    let hint = |t: &str| extract(t).payment_hint;
    assert_eq!(hint("refund it to my gift card"), Some("gift card".into()));
    assert_eq!(
        hint("back to the original payment method please"),
        Some("original".into())
    );
    assert_eq!(hint("same card as before"), Some("original".into()));
    assert_eq!(
        hint("put it on the card I paid with"),
        Some("original".into())
    );
    assert_eq!(hint("to my paypal"), Some("paypal".into()));
    assert_eq!(hint("refund to my Visa"), Some("credit card".into()));
    assert_eq!(hint("credit card please"), Some("credit card".into()));
    assert_eq!(
        hint("original payment, not a gift card"),
        Some("original".into())
    );
    assert_eq!(
        hint("a gift card instead of the original card"),
        Some("gift card".into())
    );
    assert_eq!(
        hint("refund it back to the original"),
        Some("original".into())
    );
    assert_eq!(hint("where is my order"), None);
    assert_eq!(hint("do I need the original box?"), None);
}

#[test]
fn addresses() {
    let e = extract("Ship it to 123 Main St Apt 4, Springfield, IL 62704 instead");
    assert_eq!(
        e.address,
        Some(AddressMention {
            address1: "123 Main St".into(),
            address2: "Apt 4".into(),
            city: "Springfield".into(),
            state: "IL".into(),
            zip: "62704".into(),
        })
    );
    assert_eq!(e.zip_codes, vec!["62704"]);
    assert!(e.order_numbers.is_empty());

    let a = extract("new address: 445 Maple Drive, Suite 394, Fort Worth, TX 76165")
        .address
        .unwrap_or_default();
    assert_eq!(
        (
            a.address1.as_str(),
            a.address2.as_str(),
            a.city.as_str(),
            a.state.as_str(),
            a.zip.as_str()
        ),
        ("445 Maple Drive", "Suite 394", "Fort Worth", "TX", "76165")
    );
    let a = extract("please deliver to 77 W. 5th Ave. #12B New York NY 10011")
        .address
        .unwrap_or_default();
    assert_eq!(
        (
            a.address1.as_str(),
            a.address2.as_str(),
            a.city.as_str(),
            a.state.as_str(),
            a.zip.as_str()
        ),
        ("77 W. 5th Ave", "#12B", "New York", "NY", "10011")
    );
    let a = extract("I moved to 9 Elm Street, Portland, Oregon")
        .address
        .unwrap_or_default();
    assert_eq!(
        (a.address1.as_str(), a.city.as_str(), a.state.as_str()),
        ("9 Elm Street", "Portland", "OR")
    );
    let a = extract("send it to 12 Oak Ln").address.unwrap_or_default();
    assert_eq!((a.address1.as_str(), a.city.as_str()), ("12 Oak Ln", ""));

    assert_eq!(extract("I bought 2 hiking boots").address, None);
    assert_eq!(extract("where is order #1001").address, None);
    assert_eq!(extract("I want 3 way adapters").address, None);
}

#[test]
fn never_panics_on_odd_text() {
    for t in [
        "",
        " ",
        "#",
        "##",
        "#@",
        "@",
        "a@",
        "@b.c",
        "1Z",
        "order",
        "order #",
        "my name is",
        "I'm",
        "🙂🙂 #W1 😀",
        "ship to 1 St",
        "ship to 1",
        "Ünïcödé 12345 straße",
        "9999999999999999999999999999",
        "\u{0}\u{feff}",
        "my name is 😀 😀",
        "123 Main St,",
        "123 Main St Apt",
        "123 Main St Apt.",
        "no",
        "-",
        "'",
        "’s",
    ] {
        let _ = extract(t);
    }
}

/// Every Bitext row tagged `order_id` names its id after an order word: it must be found.
#[test]
fn bitext_order_ids_are_found() {
    let path = Path::new(BITEXT_CSV);
    assert!(path.exists(), "missing Bitext data file {}", path.display());
    let rows = match read_bitext_rows(path) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let mut total = 0;
    let mut found = 0;
    let mut missed = Vec::new();
    for r in rows.iter().filter(|r| r.entity_type == "order_id") {
        total += 1;
        // The span the offsets give (which keeps leading zeros the entity_value drops).
        let span = match (r.start_offset, r.end_offset) {
            (Some(s), Some(e)) if e <= r.instruction.len() && s < e => {
                r.instruction.get(s..e).unwrap_or("")
            }
            _ => r.entity_value.as_str(),
        };
        let span = span.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let want = format!("#{}", span.to_ascii_uppercase());
        let got = extract(&r.instruction).order_numbers;
        if got.contains(&want) {
            found += 1;
        } else {
            missed.push(format!("{:?} -> {got:?}", r.instruction));
        }
    }
    // And rows without an order id (invoices "#12588", amounts, cities) yield none.
    let mut false_pos = Vec::new();
    for r in rows.iter().filter(|r| r.entity_type != "order_id") {
        let got = extract(&r.instruction).order_numbers;
        if !got.is_empty() {
            false_pos.push(format!("{:?} -> {got:?}", r.instruction));
        }
    }
    eprintln!(
        "order numbers found in {} rows without one: {false_pos:?}",
        false_pos.len()
    );
    assert!(false_pos.is_empty(), "{}", false_pos.join("\n"));
    let recall = found as f64 / total as f64;
    eprintln!("Bitext order_id recall {found}/{total} = {recall:.4}");
    assert!(total > 400, "only {total} order_id rows");
    assert!(
        recall >= 0.99,
        "recall {recall:.4}; missed:\n{}",
        missed.join("\n")
    );
}
