use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;
use crate::commerce::model::{
    Address, Fulfillment, Order, OrderItem, OrderStatus, Product, Variant,
};

const POLICY_MD: &str = "\
# Returns & Exchanges

We want you to love what you ordered.

## Return window

You have 30 days from delivery to return an item for a full refund. Items must be unworn, \
with the original tags attached. Jackets and coats follow the same rule.

## Exchanges

To swap a size or color, ask us for an exchange. We ship the new item once the old one is \
on its way back to us.

### Final sale

Items marked final sale cannot be returned or exchanged.

```
# not a heading
```
";

const SHIPPING_MD: &str = "\
Intro text before any heading.

## Delivery times

Standard shipping takes 3-5 business days; express takes 1-2 business days.

## Tracking

Once your order ships you get an email with the tracking number.
";

fn options(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect()
}

fn item(name: &str, variant: &str, product: &str, opts: &[(&str, &str)]) -> OrderItem {
    OrderItem {
        line_id: None,
        variant_id: variant.to_string(),
        product_id: product.to_string(),
        name: name.to_string(),
        options: options(opts),
        sku: None,
        price: 4_999,
        quantity: 1,
    }
}

fn order(number: &str, status: OrderStatus, items: Vec<OrderItem>, tracking: &[&str]) -> Order {
    Order {
        id: number.to_string(),
        number: number.to_string(),
        source: "tau".to_string(),
        customer_id: Some("noah_brown_6181".to_string()),
        email: None,
        status,
        items_modified: false,
        currency: "USD".to_string(),
        total: items.iter().map(|i| i.price * i.quantity).sum(),
        items,
        shipping_address: Some(Address {
            name: "Noah Brown".to_string(),
            address1: "215 River Road".to_string(),
            city: "New York".to_string(),
            country: "USA".to_string(),
            zip: "10083".to_string(),
            ..Address::default()
        }),
        fulfillments: if tracking.is_empty() {
            Vec::new()
        } else {
            vec![Fulfillment {
                carrier: Some("UPS".to_string()),
                tracking_numbers: tracking.iter().map(|t| (*t).to_string()).collect(),
                ..Fulfillment::default()
            }]
        },
        payments: Vec::new(),
        cancel_reason: None,
        created_at: None,
        updated_at: None,
        cancelled_at: None,
        position: 0,
        returns: Vec::new(),
        exchanges: Vec::new(),
        refunds: Vec::new(),
    }
}

fn order_doc(order: Order, name: &str, emails: &[&str]) -> IndexDoc {
    IndexDoc::Order {
        order,
        customer_name: Some(name.to_string()),
        customer_emails: emails.iter().map(|e| (*e).to_string()).collect(),
    }
}

fn variant(id: &str, product: &str, opts: &[(&str, &str)], price: i64) -> Variant {
    Variant {
        id: id.to_string(),
        product_id: product.to_string(),
        title: None,
        sku: None,
        options: options(opts),
        price,
        currency: "USD".to_string(),
        available: true,
        stock: None,
    }
}

fn product(id: &str, name: &str, kind: &str, variants: Vec<Variant>) -> Product {
    Product {
        id: id.to_string(),
        source: "tau".to_string(),
        name: name.to_string(),
        product_type: Some(kind.to_string()),
        vendor: None,
        description: None,
        tags: Vec::new(),
        option_names: vec!["color".to_string(), "size".to_string()],
        variants,
        created_at: None,
        updated_at: None,
    }
}

fn fixtures() -> Vec<IndexDoc> {
    let mut docs = vec![
        order_doc(
            order(
                "#W2611340",
                OrderStatus::Delivered,
                vec![
                    item(
                        "Water Bottle",
                        "6469567736",
                        "8310926033",
                        &[("capacity", "750ml"), ("color", "red")],
                    ),
                    item(
                        "Hiking Jacket",
                        "1234567890",
                        "5555555555",
                        &[("color", "green"), ("size", "L")],
                    ),
                ],
                &["1Z999AA10123456784"],
            ),
            "Noah Brown",
            &["noah.brown7922@example.com"],
        ),
        order_doc(
            order(
                "#W9999001",
                OrderStatus::Pending,
                vec![item(
                    "Desk Lamp",
                    "2222222222",
                    "3333333333",
                    &[("color", "black")],
                )],
                &[],
            ),
            "Mia Garcia",
            &["mia.garcia@example.com"],
        ),
        IndexDoc::Product(product(
            "8310926033",
            "Water Bottle",
            "Outdoor",
            vec![
                variant(
                    "6469567736",
                    "8310926033",
                    &[("capacity", "750ml"), ("color", "red")],
                    4_999,
                ),
                variant(
                    "6469567737",
                    "8310926033",
                    &[("capacity", "1000ml"), ("color", "blue")],
                    5_499,
                ),
            ],
        )),
        IndexDoc::Product(product(
            "5555555555",
            "Hiking Jacket",
            "Outerwear",
            vec![
                variant(
                    "1234567890",
                    "5555555555",
                    &[("color", "green"), ("size", "L")],
                    12_900,
                ),
                variant(
                    "1234567891",
                    "5555555555",
                    &[("color", "charcoal"), ("size", "M")],
                    12_900,
                ),
            ],
        )),
    ];
    for c in chunk_policy("returns.md", POLICY_MD)
        .into_iter()
        .chain(chunk_policy("shipping.md", SHIPPING_MD))
    {
        docs.push(IndexDoc::Policy(c));
    }
    docs
}

fn index_with_fixtures() -> SearchIndex {
    let index = SearchIndex::open_in_ram().expect("ram index");
    let n = index
        .rebuild(fixtures().into_iter(), |_| {})
        .expect("rebuild");
    assert_eq!(n, index.num_docs());
    index
}

fn keys(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.key.as_str()).collect()
}

#[test]
fn index_is_send_sync_and_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<SearchIndex>();
    assert_send_sync::<IndexWriterHandle>();
}

#[test]
fn doc_kind_parses() {
    assert_eq!(DocKind::parse("orders"), Some(DocKind::Order));
    assert_eq!(DocKind::parse("Product"), Some(DocKind::Product));
    assert_eq!(DocKind::parse("policies"), Some(DocKind::Policy));
    assert_eq!("policy".parse::<DocKind>().ok(), Some(DocKind::Policy));
    assert!("customers".parse::<DocKind>().is_err());
    for k in DocKind::ALL {
        assert_eq!(DocKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn chunk_policy_keeps_headings() {
    let chunks = chunk_policy("returns.md", POLICY_MD);
    let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "returns.md#returns-exchanges",
            "returns.md#return-window",
            "returns.md#exchanges",
            "returns.md#final-sale",
        ]
    );
    assert_eq!(chunks[0].heading, "Returns & Exchanges");
    assert!(chunks[0].text.starts_with("We want you"));
    assert_eq!(chunks[1].heading, "Returns & Exchanges › Return window");
    assert!(chunks[1].text.starts_with("You have 30 days"));
    assert_eq!(
        chunks[3].heading,
        "Returns & Exchanges › Exchanges › Final sale"
    );
    // The fenced "# not a heading" stays text.
    assert!(chunks[3].text.contains("# not a heading"));
    assert!(chunks.iter().all(|c| c.file == "returns.md"));

    // No title heading: the title comes from the file name and the intro is its own chunk.
    let chunks = chunk_policy("shipping.md", SHIPPING_MD);
    assert_eq!(chunks[0].id, "shipping.md#shipping");
    assert_eq!(chunks[0].heading, "Shipping");
    assert_eq!(chunks[0].text, "Intro text before any heading.");
    assert_eq!(chunks[1].heading, "Shipping › Delivery times");
    assert_eq!(chunks[2].id, "shipping.md#tracking");

    // Duplicate headings get distinct ids; empty sections are skipped.
    let chunks = chunk_policy("faq.md", "## Q\none\n## Q\ntwo\n## Empty\n\n## Q ##\nthree");
    let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["faq.md#q", "faq.md#q-1", "faq.md#q-2"]);
    assert_eq!(chunks[2].heading, "Faq › Q");
}

#[test]
fn load_policy_dir_reads_md_sorted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shipping.md"), SHIPPING_MD).expect("write");
    std::fs::write(dir.path().join("returns.md"), POLICY_MD).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "# ignored").expect("write");
    let chunks = load_policy_dir(dir.path()).expect("load");
    assert_eq!(chunks.len(), 7);
    assert_eq!(chunks[0].file, "returns.md");
    assert_eq!(chunks[6].file, "shipping.md");
    assert!(
        load_policy_dir(&dir.path().join("missing"))
            .expect("missing")
            .is_empty()
    );
    std::fs::write(dir.path().join("bad.md"), [0xff, 0xfe, 0x00]).expect("write");
    let err = load_policy_dir(dir.path()).expect_err("not utf-8");
    assert!(err.to_string().contains("bad.md"), "{err}");
}

#[test]
fn finds_order_by_number_any_form() {
    let index = index_with_fixtures();
    for q in [
        "#W2611340",
        "W2611340",
        "w2611340",
        "where is my order #w2611340?",
        "order#W2611340",
    ] {
        let hits = index.search(q, None, 5).expect("search");
        assert_eq!(
            hits.first().map(|h| h.key.as_str()),
            Some("#W2611340"),
            "query {q:?}"
        );
        assert_eq!(hits[0].kind, DocKind::Order);
        assert_eq!(hits[0].title, "#W2611340 · Noah Brown");
        assert!(
            hits[0].snippet.starts_with("delivered"),
            "{}",
            hits[0].snippet
        );
        assert!(hits[0].snippet.contains("Water Bottle (750ml, red)"));
    }
}

#[test]
fn finds_order_by_tracking_number_and_email() {
    let index = index_with_fixtures();
    let hits = index.search("1z999aa10123456784", None, 5).expect("search");
    assert_eq!(keys(&hits).first(), Some(&"#W2611340"));

    for q in [
        "noah.brown7922@example.com",
        "Noah.Brown7922@Example.com.",
        "orders for <MIA.GARCIA@example.com>",
    ] {
        let hits = index.search(q, Some(DocKind::Order), 5).expect("search");
        let expected = if q.contains("MIA") {
            "#W9999001"
        } else {
            "#W2611340"
        };
        assert_eq!(keys(&hits).first(), Some(&expected), "query {q:?}");
    }
    // By name, through full text.
    let hits = index.search("mia garcia", None, 5).expect("search");
    assert_eq!(keys(&hits).first(), Some(&"#W9999001"));
}

#[test]
fn finds_product_by_name_and_option() {
    let index = index_with_fixtures();
    let hits = index
        .search("water bottle", Some(DocKind::Product), 5)
        .expect("search");
    assert_eq!(keys(&hits), ["8310926033"]);
    assert_eq!(hits[0].title, "Water Bottle");
    assert!(
        hits[0].snippet.contains("capacity: 750ml, 1000ml"),
        "{}",
        hits[0].snippet
    );
    assert!(
        hits[0].snippet.contains("$49.99–$54.99"),
        "{}",
        hits[0].snippet
    );

    let hits = index.search("charcoal", None, 5).expect("search");
    assert_eq!(keys(&hits), ["5555555555"]);
    let hits = index.search("1000ml", None, 5).expect("search");
    assert_eq!(keys(&hits), ["8310926033"]);
    // A variant id finds the product and orders containing it, exact.
    let hits = index.search("6469567737", None, 5).expect("search");
    assert_eq!(keys(&hits), ["8310926033"]);
}

#[test]
fn finds_policy_section_from_question() {
    let index = index_with_fixtures();
    let q = "how many days do I have to return my jacket?";
    let hits = index.search(q, None, 5).expect("search");
    assert_eq!(
        keys(&hits).first(),
        Some(&"returns.md#return-window"),
        "{hits:#?}"
    );
    let top = &hits[0];
    assert_eq!(top.kind, DocKind::Policy);
    assert_eq!(top.title, "Policy › Returns & Exchanges › Return window");
    assert!(top.snippet.contains("30 days"), "{}", top.snippet);
    assert!(top.snippet.chars().count() <= SNIPPET_CHARS + 4);

    let hits = index
        .search("how long does shipping take", Some(DocKind::Policy), 3)
        .expect("search");
    assert_eq!(
        keys(&hits).first(),
        Some(&"shipping.md#delivery-times"),
        "{hits:#?}"
    );
}

#[test]
fn kind_filter_restricts() {
    let index = index_with_fixtures();
    let all = index.search("water bottle", None, 10).expect("search");
    assert!(all.iter().any(|h| h.kind == DocKind::Order));
    assert!(all.iter().any(|h| h.kind == DocKind::Product));
    for kind in DocKind::ALL {
        let hits = index
            .search("water bottle jacket return", Some(kind), 10)
            .expect("search");
        assert!(!hits.is_empty(), "{kind}");
        assert!(hits.iter().all(|h| h.kind == kind), "{kind}: {hits:#?}");
    }
}

#[test]
fn odd_queries_do_not_fail() {
    let index = index_with_fixtures();
    for q in [
        "",
        "   ",
        "\"",
        "(",
        "AND",
        "title:",
        "jacket\"",
        "a:b:c",
        "-",
        "+",
        "*",
        "[1 TO",
        "héllo wörld ☃",
        "return^",
        "~",
        "email:",
        "!!!???",
        "#",
    ] {
        assert!(index.search(q, None, 5).is_ok(), "query {q:?}");
    }
    assert!(index.search("jacket", None, 0).expect("search").is_empty());
    let long = "jacket ".repeat(2_000);
    assert!(!index.search(&long, None, 5).expect("search").is_empty());
}

#[tokio::test]
async fn writer_upsert_flush_is_searchable_and_replaces() {
    let index = SearchIndex::open_in_ram().expect("ram index");
    let writer = index.spawn_writer();
    let first = order(
        "#W1000001",
        OrderStatus::Pending,
        vec![item("Desk Lamp", "1", "2", &[])],
        &[],
    );
    writer
        .upsert(order_doc(first.clone(), "Ann Lee", &["ann@example.com"]))
        .await
        .expect("upsert");
    writer.flush().await.expect("flush");
    let hits = index.search("#W1000001", None, 5).expect("search");
    assert_eq!(keys(&hits), ["#W1000001"]);
    assert!(hits[0].snippet.starts_with("pending"));

    let mut second = first;
    second.status = OrderStatus::Cancelled;
    writer
        .upsert(order_doc(second, "Ann Lee", &["ann@example.com"]))
        .await
        .expect("upsert");
    writer.flush().await.expect("flush");
    let hits = index.search("w1000001", None, 5).expect("search");
    assert_eq!(keys(&hits), ["#W1000001"]);
    assert!(
        hits[0].snippet.starts_with("cancelled"),
        "{}",
        hits[0].snippet
    );
    assert_eq!(index.num_docs(), 1);

    writer
        .delete(DocKind::Order, "#W1000001")
        .await
        .expect("delete");
    writer.flush().await.expect("flush");
    assert!(
        index
            .search("w1000001", None, 5)
            .expect("search")
            .is_empty()
    );
    assert_eq!(index.num_docs(), 0);

    // A second writer on the same index cannot start while the first runs.
    let other = index.spawn_writer();
    let err = other.flush().await.expect_err("busy");
    assert!(err.to_string().contains("locked"), "{err}");

    writer.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn writer_commits_on_its_own_within_a_second() {
    let index = SearchIndex::open_in_ram().expect("ram index");
    let writer = index.spawn_writer();
    for c in chunk_policy("returns.md", POLICY_MD) {
        writer.upsert(IndexDoc::Policy(c)).await.expect("upsert");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while index.num_docs() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "not visible within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clone = writer.clone();
    writer.shutdown().await.expect("shutdown");
    let err = clone.flush().await.expect_err("stopped");
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test]
async fn reopening_a_dir_finds_docs() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = SearchIndex::open(dir.path()).expect("open");
        assert!(index.needs_rebuild(), "a new index needs a rebuild");
        let writer = index.spawn_writer();
        for doc in fixtures() {
            writer.upsert(doc).await.expect("upsert");
        }
        writer.shutdown().await.expect("shutdown");
    }
    let index = SearchIndex::open(dir.path()).expect("reopen");
    assert!(!index.needs_rebuild());
    assert_eq!(index.num_docs(), fixtures().len() as u64);
    let hits = index.search("W2611340", None, 3).expect("search");
    assert_eq!(keys(&hits).first(), Some(&"#W2611340"));
    // A writer can be started again (the lock was released).
    let writer = index.spawn_writer();
    writer.flush().await.expect("flush");
    writer.shutdown().await.expect("shutdown");
}

#[test]
fn schema_change_wipes_and_needs_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keep-me.txt"), "not ours").expect("write");
    {
        // An index written by "an older Concierge" with another schema.
        let mut b = tantivy::schema::Schema::builder();
        let title = b.add_text_field("title", tantivy::schema::TEXT | tantivy::schema::STORED);
        let old = tantivy::Index::create_in_dir(dir.path(), b.build()).expect("old index");
        let mut w: tantivy::IndexWriter = old.writer(20_000_000).expect("writer");
        w.add_document(tantivy::doc!(title => "old doc"))
            .expect("add");
        w.commit().expect("commit");
        w.wait_merging_threads().expect("merge");
    }
    let index = SearchIndex::open(dir.path()).expect("open");
    assert!(index.needs_rebuild());
    assert_eq!(index.num_docs(), 0);
    assert!(dir.path().join("keep-me.txt").exists());

    let mut calls = Vec::new();
    let n = index
        .rebuild(fixtures().into_iter(), |n| calls.push(n))
        .expect("rebuild");
    assert_eq!(calls, [n]);
    assert!(!index.needs_rebuild());
    drop(index);
    let index = SearchIndex::open(dir.path()).expect("reopen");
    assert!(!index.needs_rebuild());
    assert_eq!(index.num_docs(), n);

    // Garbage where meta.json should be: recreated too.
    drop(index);
    std::fs::write(dir.path().join("meta.json"), "{ not json").expect("write");
    let index = SearchIndex::open(dir.path()).expect("open corrupt");
    assert!(index.needs_rebuild());
    assert_eq!(index.num_docs(), 0);
}

/// Synthetic orders for the rebuild timing.
fn synthetic_orders(n: usize) -> Vec<IndexDoc> {
    const NAMES: [&str; 6] = [
        "Water Bottle",
        "Hiking Jacket",
        "Desk Lamp",
        "T-Shirt",
        "Sneakers",
        "Backpack",
    ];
    const COLORS: [&str; 5] = ["red", "blue", "green", "black", "white"];
    (0..n)
        .map(|i| {
            let items = (0..(i % 4 + 1))
                .map(|j| {
                    let k = (i + j) % NAMES.len();
                    item(
                        NAMES[k],
                        &format!("{}", 1_000_000_000 + i * 7 + j),
                        &format!("{}", 2_000_000_000 + k),
                        &[("color", COLORS[(i + j) % COLORS.len()]), ("size", "M")],
                    )
                })
                .collect();
            let o = order(
                &format!("#W{:07}", i),
                OrderStatus::ALL[i % OrderStatus::ALL.len()],
                items,
                &[&format!("1Z{:016}", i)],
            );
            order_doc(
                o,
                &format!("Customer {i}"),
                &[&format!("customer{i}@example.com")],
            )
        })
        .collect()
}

#[test]
fn rebuild_progress_and_bench() {
    let docs = synthetic_orders(10_000);
    let index = SearchIndex::open_in_ram().expect("ram index");
    let mut calls = Vec::new();
    let n = index
        .rebuild(docs.clone().into_iter(), |n| calls.push(n))
        .expect("rebuild");
    assert_eq!(n, 10_000);
    assert_eq!(calls.len(), 10);
    assert_eq!(calls.last(), Some(&10_000));
    let hits = index.search("#W0004242", None, 3).expect("search");
    assert_eq!(keys(&hits).first(), Some(&"#W0004242"));
    let hits = index
        .search("customer777@example.com", None, 3)
        .expect("search");
    assert_eq!(keys(&hits).first(), Some(&"#W0000777"));

    let (count, took) = bench_rebuild(docs).expect("bench");
    assert_eq!(count, 10_000);
    eprintln!("bench_rebuild: {count} synthetic orders in {took:?}");
}

/// A brand's policy texts written the way shops write them, with the questions shoppers ask.
#[test]
fn realistic_policy_questions() {
    let returns = "# Returns, exchanges and refunds\n\nThis policy covers everything you buy from \
        Northwind Outfitters.\n\n## Return window\n\nYou can return most items within 30 days of \
        delivery. Items must be unused and in their original packaging with tags attached. Start \
        a return from your account or by writing to support.\n\n## Exchanges\n\nWant a \
        different size or color? Exchanges are free within 30 days of delivery, for the same \
        product in another variant. If the new item costs more, we charge the difference.\n\n\
        ## Refunds\n\nRefunds go back to the original payment method within 5-7 business days \
        after we receive the return. Gift card purchases are refunded to the gift card.\n\n\
        ## Non-returnable items\n\nSocks, underwear and personalised items cannot be returned \
        unless they arrive damaged.\n";
    let shipping = "# Shipping\n\n## Delivery times\n\nStandard delivery takes 3-5 business days; \
        express delivery takes 1-2 business days. Orders placed before 2 pm ship the same day.\n\n\
        ## International shipping\n\nWe ship to Canada, the UK and the EU. Duties and taxes are \
        paid by the customer on arrival.\n\n## Lost or damaged parcels\n\nIf your parcel is \
        lost or arrives damaged, contact us within 14 days and we will send a replacement or \
        refund you.\n\n## Changing your address\n\nYou can change the shipping address of an \
        order until it ships.\n";
    let mut docs: Vec<IndexDoc> = fixtures()
        .into_iter()
        .filter(|d| d.kind() != DocKind::Policy)
        .collect();
    for c in chunk_policy("returns.md", returns)
        .into_iter()
        .chain(chunk_policy("shipping.md", shipping))
    {
        docs.push(IndexDoc::Policy(c));
    }
    let index = SearchIndex::open_in_ram().expect("ram index");
    index.rebuild(docs.into_iter(), |_| {}).expect("rebuild");
    for (q, expected) in [
        (
            "how many days do I have to return my jacket?",
            "returns.md#return-window",
        ),
        (
            "can I exchange my jacket for a different size",
            "returns.md#exchanges",
        ),
        (
            "do you ship to canada",
            "shipping.md#international-shipping",
        ),
        ("how long until I get my money back", "returns.md#refunds"),
        (
            "I need to change my shipping address",
            "shipping.md#changing-your-address",
        ),
        ("can I return socks", "returns.md#non-returnable-items"),
        (
            "my parcel is damaged",
            "shipping.md#lost-or-damaged-parcels",
        ),
    ] {
        let hits = index.search(q, None, 3).expect("search");
        assert_eq!(keys(&hits).first(), Some(&expected), "{q}: {hits:#?}");
    }
}

#[test]
fn long_policy_sections_get_a_passage_snippet() {
    let filler = "Our team reviews every request carefully and answers within two days. ".repeat(6);
    let md = format!(
        "# Warranty\n\n## Coverage\n\n{filler}Zippers and seams are covered for five years \
         against manufacturing defects. {filler}"
    );
    let index = SearchIndex::open_in_ram().expect("ram index");
    let docs = chunk_policy("warranty.md", &md)
        .into_iter()
        .map(IndexDoc::Policy);
    index.rebuild(docs, |_| {}).expect("rebuild");
    let hits = index
        .search("is my broken zipper covered?", None, 3)
        .expect("search");
    assert_eq!(keys(&hits).first(), Some(&"warranty.md#coverage"));
    let snippet = &hits[0].snippet;
    assert!(snippet.contains("Zippers"), "{snippet}");
    assert!(
        snippet.starts_with('…') && snippet.ends_with('…'),
        "{snippet}"
    );
    assert!(snippet.chars().count() <= SNIPPET_CHARS + 4, "{snippet}");
    assert!(!snippet.contains('\n'));

    // No query word in the text (matched by heading only): the section's beginning.
    let hits = index.search("warranty", None, 3).expect("search");
    assert!(
        hits[0].snippet.starts_with("Our team"),
        "{}",
        hits[0].snippet
    );
    assert!(hits[0].snippet.ends_with('…'));
}
