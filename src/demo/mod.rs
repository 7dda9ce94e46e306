//! A deterministic demo store for the fictional Alder & Pine home-and-outdoor shop: a catalogue
//! of about forty products, customers with US addresses and payment methods, and orders spread
//! over the 120 days before `now` in every life stage (pending, shipped, delivered, cancelled,
//! return or exchange requested). Used for demos, tests and the search-index benchmark.
//!
//! It must not read files, the clock or the environment: the store follows from `seed` and `now`
//! alone. Everything is fictional: emails are on example.com/example.org, phone numbers are in
//! the 555-0100..555-0199 range, tracking numbers only have their carrier's shape.

mod data;

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::commerce::model::{
    Address, Customer, ExchangeRequest, Fulfillment, Millis, Minor, Order, OrderItem, OrderStatus,
    PaymentEntry, PaymentKind, PaymentMethod, Product, ReturnRequest, Variant,
};
use crate::commerce::policy::{DAY_MS, add_business_days};

/// Orders are spread over this many days before `now`.
pub const WINDOW_DAYS: i64 = 120;
/// Order numbers have seven digits, so at most this many orders are generated.
pub const MAX_ORDERS: usize = 9_000_000;
/// Cancel reasons used, matching `brand/policy.toml`.
pub const CANCEL_REASONS: [&str; 2] = ["no longer needed", "ordered by mistake"];

const HOUR: Millis = 3_600_000;
const SOURCE: &str = "demo";
const USD: &str = "USD";
/// Return window of the brand policy; returns and exchanges are only requested inside it.
const RETURN_WINDOW_MS: Millis = 30 * DAY_MS;

type Rand = ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct DemoStore {
    pub customers: Vec<Customer>,
    pub products: Vec<Product>,
    pub orders: Vec<Order>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSize {
    pub customers: usize,
    pub orders: usize,
}

impl Default for DemoSize {
    fn default() -> Self {
        DemoSize {
            customers: 600,
            orders: 2_400,
        }
    }
}

impl DemoSize {
    /// `orders` orders over a quarter as many customers (the default's ratio); for benchmarks.
    pub fn with_orders(orders: usize) -> Self {
        DemoSize {
            customers: (orders / 4).max(1),
            orders,
        }
    }
}

/// Builds the store. Same `seed` and `now` → the same store; the catalogue depends on the seed
/// only. At least one customer is made when orders are asked for; when `orders >= customers`
/// every customer has an order. 100,000 orders take well under a second in a release build.
pub fn generate(seed: u64, now: Millis, size: DemoSize) -> DemoStore {
    let mut rng = Rand::seed_from_u64(seed);
    let start = now - WINDOW_DAYS * DAY_MS;
    let mut ids = Ids::new(&mut rng);
    let products = catalogue(&mut rng, &mut ids, start);

    let n_orders = size.orders.min(MAX_ORDERS);
    let n_customers = if n_orders > 0 {
        size.customers.max(1)
    } else {
        size.customers
    };
    let mut customers: Vec<Customer> = (0..n_customers)
        .map(|_| customer(&mut rng, &mut ids))
        .collect();

    // Every customer first (when there are enough orders), then repeat buyers, skewed so that
    // some customers have many orders.
    let mut owners: Vec<usize> = (0..n_customers.min(n_orders)).collect();
    while owners.len() < n_orders {
        let u: f64 = rng.random();
        owners.push(((u.powf(1.3) * n_customers as f64) as usize).min(n_customers - 1));
    }
    let mut orders: Vec<Order> = owners
        .iter()
        .map(|&c| order(&mut rng, &mut ids, &customers[c], &products, now))
        .collect();

    // Positions within each customer's list, oldest first; customers join before their first order.
    let mut by_customer: Vec<Vec<usize>> = vec![Vec::new(); n_customers];
    for (i, &c) in owners.iter().enumerate() {
        by_customer[c].push(i);
    }
    for (c, list) in by_customer.iter_mut().enumerate() {
        list.sort_by_key(|&i| (orders[i].created_at, i));
        for (pos, &i) in list.iter().enumerate() {
            orders[i].position = pos as i64;
        }
        let joined = match list.first().and_then(|&i| orders[i].created_at) {
            Some(first) => match first - rng.random_range(0..21 * DAY_MS) {
                t if t < start => start + rng.random_range(0..=first - start),
                t => t,
            },
            None => start + rng.random_range(0..WINDOW_DAYS * DAY_MS),
        };
        customers[c].created_at = Some(joined);
        customers[c].updated_at = Some(joined);
    }
    orders.sort_by(|a, b| (a.created_at, &a.number).cmp(&(b.created_at, &b.number)));
    DemoStore {
        customers,
        products,
        orders,
    }
}

/// Unique ids: random 10-digit product/variant ids, customer ids and emails, and two
/// permutations of the 7-digit range for order numbers and payment-method ids.
struct Ids {
    ten: HashSet<u64>,
    names: HashSet<String>,
    order: Perm,
    payment: Perm,
    ups_account: String,
}

impl Ids {
    fn new(rng: &mut Rand) -> Ids {
        let ups_account = (0..6).map(|_| alnum(rng)).collect();
        Ids {
            ten: HashSet::new(),
            names: HashSet::new(),
            order: Perm::new(rng),
            payment: Perm::new(rng),
            ups_account,
        }
    }

    fn ten_digits(&mut self, rng: &mut Rand) -> String {
        loop {
            let v = rng.random_range(1_000_000_000u64..10_000_000_000);
            if self.ten.insert(v) {
                return v.to_string();
            }
        }
    }

    /// `make(n)` for random n until the result is new; wider numbers after many collisions.
    fn unique(&mut self, rng: &mut Rand, make: impl Fn(u32) -> String) -> String {
        let mut hi = 10_000;
        loop {
            for _ in 0..16 {
                let s = make(rng.random_range(hi / 10..hi));
                if self.names.insert(s.clone()) {
                    return s;
                }
            }
            hi = hi.saturating_mul(10);
        }
    }
}

/// A bijection on 0..9,000,000 (`a` coprime with 9,000,000 = 2⁶·3²·5⁶), shifted to 7 digits.
struct Perm {
    a: u64,
    b: u64,
    next: u64,
}

impl Perm {
    const N: u64 = 9_000_000;
    fn new(rng: &mut Rand) -> Perm {
        loop {
            let a = rng.random_range(1_000_000..Self::N);
            if a % 2 != 0 && a % 3 != 0 && a % 5 != 0 {
                let b = rng.random_range(0..Self::N);
                return Perm { a, b, next: 0 };
            }
        }
    }
    fn next(&mut self) -> u64 {
        let v = (self.a * (self.next % Self::N) + self.b) % Self::N + 1_000_000;
        self.next += 1;
        v
    }
}

fn pick<'a, T>(rng: &mut Rand, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

fn weighted<T: Copy>(rng: &mut Rand, xs: &[(T, u32)]) -> T {
    let total: u32 = xs.iter().map(|x| x.1).sum();
    let mut r = rng.random_range(0..total.max(1));
    for &(v, w) in xs {
        if r < w {
            return v;
        }
        r -= w;
    }
    xs[xs.len() - 1].0
}

fn alnum(rng: &mut Rand) -> char {
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    char::from(*pick(rng, CHARS))
}

fn digits(rng: &mut Rand, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn slug(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

fn day_start(t: Millis) -> Millis {
    t - t.rem_euclid(DAY_MS)
}

fn catalogue(rng: &mut Rand, ids: &mut Ids, start: Millis) -> Vec<Product> {
    let mut out = Vec::with_capacity(data::CATALOGUE.len());
    for (pi, spec) in data::CATALOGUE.iter().enumerate() {
        let id = ids.ten_digits(rng);
        let ending: Minor = *pick(rng, &[0, 95, 99, 95]);
        let combos: usize = spec.dims.iter().map(|d| d.1.len()).product();
        let k = rng.random_range(5..=10).min(combos);
        let mut chosen = rand::seq::index::sample(rng, combos, k).into_vec();
        chosen.sort_unstable();
        let mut variants = Vec::with_capacity(k);
        for (vi, combo) in chosen.into_iter().enumerate() {
            let (mut rest, mut price) = (combo, spec.base);
            let mut options = Map::new();
            let mut title = Vec::new();
            for &(name, values, step) in spec.dims {
                let idx = rest % values.len();
                rest /= values.len();
                options.insert(name.to_string(), Value::String(values[idx].to_string()));
                price += spec.base * step * idx as i64 / 100;
                title.push(values[idx]);
            }
            let dollars = (price + 50) / 100;
            let price = if ending == 0 {
                dollars * 100
            } else {
                dollars * 100 - 100 + ending
            };
            let stock = if rng.random_bool(0.15) {
                0
            } else {
                rng.random_range(1..=120)
            };
            variants.push(Variant {
                id: ids.ten_digits(rng),
                product_id: id.clone(),
                title: Some(title.join(" / ")),
                sku: Some(format!("AP-{:03}-{:02}", pi + 1, vi + 1)),
                options,
                price,
                currency: USD.into(),
                available: stock > 0,
                stock: Some(stock),
            });
        }
        let mut tags = vec![spec.category.to_ascii_lowercase()];
        for (tag, p) in [
            ("bestseller", 0.2),
            ("new arrival", 0.15),
            ("gift idea", 0.15),
        ] {
            if rng.random_bool(p) {
                tags.push(tag.into());
            }
        }
        let line = match spec.category {
            "Apparel" | "Footwear" => "Outfitters",
            "Camping" => "Trailworks",
            "Kitchen" => "Kitchen",
            _ => "Home",
        };
        out.push(Product {
            id,
            source: SOURCE.into(),
            name: spec.name.into(),
            product_type: Some(spec.category.into()),
            vendor: Some(format!("Alder & Pine {line}")),
            description: Some(spec.description.into()),
            tags,
            option_names: spec.dims.iter().map(|d| d.0.to_string()).collect(),
            variants,
            created_at: Some(start),
            updated_at: Some(start),
        });
    }
    out
}

fn address(rng: &mut Rand, name: &str) -> Address {
    let &(city, state, zip3, area) = pick(rng, data::CITIES);
    let address2 = match rng.random_range(0..20) {
        0..=3 => format!(
            "Apt {}",
            rng.random_range(1..=40) * 10 + rng.random_range(1..=9)
        ),
        4..=5 => format!(
            "Unit {}{}",
            rng.random_range(1..=12),
            pick(rng, &['A', 'B', 'C', 'D'])
        ),
        6 => format!("Suite {}", rng.random_range(100..=999)),
        _ => String::new(),
    };
    Address {
        name: name.into(),
        address1: format!(
            "{} {} {}",
            rng.random_range(10..=9899),
            pick(rng, data::STREETS),
            pick(rng, data::STREET_SUFFIXES)
        ),
        address2,
        city: city.into(),
        state: state.into(),
        country: "USA".into(),
        zip: format!("{:05}", zip3 * 100 + rng.random_range(1..100)),
        phone: format!("{area}-555-01{:02}", rng.random_range(0..100)),
    }
}

fn customer(rng: &mut Rand, ids: &mut Ids) -> Customer {
    let first = *pick(rng, data::FIRST_NAMES);
    let last = *pick(rng, data::LAST_NAMES);
    let (f, l) = (slug(first), slug(last));
    let id = ids.unique(rng, |n| format!("{f}_{l}_{n}"));
    let domain = if rng.random_bool(0.85) {
        "example.com"
    } else {
        "example.org"
    };
    let email = ids.unique(rng, |n| format!("{f}.{l}{n}@{domain}"));
    let full = format!("{first} {last}");
    let mut addresses = vec![address(rng, &full)];
    if rng.random_bool(0.1) {
        addresses.push(address(rng, &full));
    }
    let phones = vec![addresses[0].phone.clone()];

    let mut methods = Vec::new();
    let count = weighted(rng, &[(1, 50), (2, 35), (3, 15)]);
    let mut kinds = vec![if rng.random_bool(0.7) {
        "credit_card"
    } else {
        "paypal"
    }];
    while kinds.len() < count {
        let k = *pick(rng, &["credit_card", "paypal", "gift_card"]);
        if k == "credit_card" || !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        let (brand, last_four, balance) = match kind {
            "credit_card" => {
                let brand = weighted(
                    rng,
                    &[
                        ("visa", 50),
                        ("mastercard", 30),
                        ("amex", 12),
                        ("discover", 8),
                    ],
                );
                (Some(brand.to_string()), Some(digits(rng, 4)), None)
            }
            "gift_card" => (None, None, Some(rng.random_range(0..=30_000))),
            _ => (None, None, None),
        };
        methods.push(PaymentMethod {
            id: format!("{kind}_{}", ids.payment.next()),
            kind: kind.into(),
            brand,
            last_four,
            balance,
            currency: USD.into(),
        });
    }
    Customer {
        id,
        source: SOURCE.into(),
        first_name: first.into(),
        last_name: last.into(),
        emails: vec![email],
        phones,
        addresses,
        payment_methods: methods,
        note: None,
        created_at: None,
        updated_at: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Ups,
    Usps,
    FedEx,
    Dhl,
}

impl Carrier {
    fn name(self) -> &'static str {
        match self {
            Carrier::Ups => "UPS",
            Carrier::Usps => "USPS",
            Carrier::FedEx => "FedEx",
            Carrier::Dhl => "DHL",
        }
    }

    fn tracking_url(self, number: &str) -> String {
        match self {
            Carrier::Ups => format!("https://www.ups.com/track?tracknum={number}"),
            Carrier::Usps => {
                format!("https://tools.usps.com/go/TrackConfirmAction?tLabels={number}")
            }
            Carrier::FedEx => format!("https://www.fedex.com/fedextrack/?trknbr={number}"),
            Carrier::Dhl => {
                format!("https://www.dhl.com/us-en/home/tracking.html?tracking-id={number}")
            }
        }
    }

    /// A number in the carrier's format, with its check digit.
    fn tracking_number(self, rng: &mut Rand, express: bool, ups_account: &str) -> String {
        match self {
            Carrier::Ups => {
                let service = if express { "02" } else { "03" };
                let body = format!("{ups_account}{service}{}", digits(rng, 7));
                format!("1Z{body}{}", ups_check(&body))
            }
            Carrier::Usps => {
                let prefix = if rng.random_bool(0.7) { "9400" } else { "9205" };
                let body = format!("{prefix}1{}", digits(rng, 16));
                format!("{body}{}", mod10_31(&body))
            }
            Carrier::FedEx => {
                let body = format!("{}{}", rng.random_range(1..10), digits(rng, 10));
                format!("{body}{}", fedex_check(&body))
            }
            Carrier::Dhl => {
                let body = rng.random_range(100_000_000u64..1_000_000_000);
                format!("{body}{}", body % 7)
            }
        }
    }
}

fn digit_values(s: &str) -> impl DoubleEndedIterator<Item = u32> + '_ {
    s.chars().map(|c| c.to_digit(10).unwrap_or(0))
}

/// UPS: letters count as (ASCII − 63) mod 10; odd positions ×1, even ×2.
fn ups_check(body: &str) -> u32 {
    let sum: u32 = body
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let v = c.to_digit(10).unwrap_or((c as u32).wrapping_sub(63) % 10);
            if i % 2 == 1 { v * 2 } else { v }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// USPS IMpb: from the right, weights 3, 1, 3, …
fn mod10_31(body: &str) -> u32 {
    let sum: u32 = digit_values(body)
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d * 3 } else { d })
        .sum();
    (10 - sum % 10) % 10
}

/// FedEx 12-digit: from the right, weights 1, 3, 7, …; sum mod 11, 10 → 0.
fn fedex_check(body: &str) -> u32 {
    let sum: u32 = digit_values(body)
        .rev()
        .enumerate()
        .map(|(i, d)| d * [1, 3, 7][i % 3])
        .sum();
    sum % 11 % 10
}

fn created_time(rng: &mut Rand, now: Millis) -> Millis {
    let span = WINDOW_DAYS * DAY_MS;
    let mut t = now;
    // Slightly more recent orders than old ones (a growing shop), and few at night (US time).
    for _ in 0..3 {
        let u: f64 = rng.random();
        t = now - ((u.powf(1.3) * span as f64) as Millis).min(span - 1);
        let hour_et = (t - 5 * HOUR).rem_euclid(DAY_MS) / HOUR;
        if !(1..7).contains(&hour_et) {
            break;
        }
    }
    t
}

fn order(
    rng: &mut Rand,
    ids: &mut Ids,
    customer: &Customer,
    products: &[Product],
    now: Millis,
) -> Order {
    let seq = ids.order.next();
    let number = format!("#D{seq}");
    let created = created_time(rng, now);
    let lines = weighted(rng, &[(1, 45), (2, 30), (3, 17), (4, 8)]).min(products.len());
    let chosen = rand::seq::index::sample(rng, products.len(), lines).into_vec();
    let mut items = Vec::with_capacity(lines);
    for (i, &pi) in chosen.iter().enumerate() {
        let p = &products[pi];
        let v = pick(rng, &p.variants);
        items.push(OrderItem {
            line_id: Some(format!("{seq}-{}", i + 1)),
            variant_id: v.id.clone(),
            product_id: p.id.clone(),
            name: p.name.clone(),
            options: v.options.clone(),
            sku: v.sku.clone(),
            price: v.price,
            quantity: if rng.random_bool(0.1) { 2 } else { 1 },
        });
    }
    let total: Minor = items.iter().map(|i| i.price * i.quantity).sum();
    let methods = &customer.payment_methods;
    // Gift cards pay for the smaller orders; a larger one goes on a card or PayPal if there is one.
    let mut method = pick(rng, methods);
    if method.is_gift_card() && (total > 25_000 || rng.random_bool(0.5)) {
        let others: Vec<&PaymentMethod> = methods.iter().filter(|m| !m.is_gift_card()).collect();
        if !others.is_empty() {
            method = *pick(rng, &others);
        }
    }
    let mut o = Order {
        id: number.clone(),
        number,
        source: SOURCE.into(),
        customer_id: Some(customer.id.clone()),
        email: customer.primary_email().map(str::to_string),
        status: OrderStatus::Pending,
        items_modified: false,
        currency: USD.into(),
        items,
        shipping_address: customer.addresses.first().cloned(),
        fulfillments: Vec::new(),
        payments: vec![PaymentEntry {
            kind: PaymentKind::Payment,
            amount: total,
            payment_method_id: method.id.clone(),
            created_at: Some(created),
        }],
        total,
        cancel_reason: None,
        created_at: Some(created),
        updated_at: Some(created),
        cancelled_at: None,
        position: 0,
        returns: Vec::new(),
        exchanges: Vec::new(),
        refunds: Vec::new(),
    };

    let express = rng.random_bool(0.2);
    let (dmin, dmax) = if express { (1, 3) } else { (3, 7) };
    let first_ship = add_business_days(day_start(created), rng.random_range(1..=2))
        + rng.random_range(13 * HOUR..23 * HOUR);

    // Cancelled before it shipped.
    if rng.random_bool(0.07) {
        let latest = (first_ship - created).min(30 * HOUR);
        let at = created + rng.random_range(10 * 60_000..latest.max(10 * 60_000 + 1));
        if at <= now {
            o.status = OrderStatus::Cancelled;
            o.cancel_reason = Some(pick(rng, &CANCEL_REASONS).to_string());
            o.cancelled_at = Some(at);
            o.updated_at = Some(at);
            o.payments.push(PaymentEntry {
                kind: PaymentKind::Refund,
                amount: total,
                payment_method_id: method.id.clone(),
                created_at: Some(at),
            });
            return o;
        }
    }

    // One shipment, or now and then two when several lines ship from different shelves.
    let split = if o.items.len() >= 2 && rng.random_bool(0.1) {
        rng.random_range(1..o.items.len())
    } else {
        o.items.len()
    };
    let groups: Vec<Vec<String>> = [&o.items[..split], &o.items[split..]]
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| g.iter().map(|i| i.variant_id.clone()).collect())
        .collect();
    let (mut shipped, mut delivered) = (0, 0);
    for (gi, item_ids) in groups.iter().enumerate() {
        let shipped_at = if gi == 0 {
            first_ship
        } else {
            add_business_days(day_start(first_ship), 1) + rng.random_range(13 * HOUR..23 * HOUR)
        };
        if shipped_at > now {
            continue;
        }
        let carrier = if express {
            weighted(
                rng,
                &[(Carrier::Ups, 45), (Carrier::FedEx, 40), (Carrier::Dhl, 15)],
            )
        } else {
            weighted(
                rng,
                &[
                    (Carrier::Usps, 45),
                    (Carrier::Ups, 30),
                    (Carrier::FedEx, 18),
                    (Carrier::Dhl, 7),
                ],
            )
        };
        let tracking = carrier.tracking_number(rng, express, &ids.ups_account);
        let late = if rng.random_bool(0.05) {
            rng.random_range(1..=2)
        } else {
            0
        };
        let days = rng.random_range(dmin..=dmax) + late;
        let arrives =
            add_business_days(day_start(shipped_at), days) + rng.random_range(14 * HOUR..24 * HOUR);
        let delivered_at = (arrives <= now).then_some(arrives);
        shipped += 1;
        delivered += usize::from(delivered_at.is_some());
        o.updated_at = o.updated_at.max(Some(delivered_at.unwrap_or(shipped_at)));
        o.fulfillments.push(Fulfillment {
            id: Some(format!("ful_{seq}_{}", gi + 1)),
            carrier: Some(carrier.name().into()),
            status: Some(
                if delivered_at.is_some() {
                    "delivered"
                } else {
                    "in_transit"
                }
                .into(),
            ),
            tracking_urls: vec![carrier.tracking_url(&tracking)],
            tracking_numbers: vec![tracking],
            item_ids: item_ids.clone(),
            shipped_at: Some(shipped_at),
            delivered_at,
            estimated_at: Some(add_business_days(shipped_at, dmax)),
        });
    }
    o.status = match (shipped, delivered) {
        (0, _) => OrderStatus::Pending,
        (s, d) if d == groups.len() && s == d => OrderStatus::Delivered,
        _ => OrderStatus::Processed,
    };
    if o.status == OrderStatus::Pending {
        o.items_modified = rng.random_bool(0.05);
    }
    if o.status == OrderStatus::Delivered {
        after_delivery(rng, &mut o, &chosen, products, &method.id, seq, now);
    }
    o
}

/// A few delivered orders get a return or an exchange request inside the return window.
fn after_delivery(
    rng: &mut Rand,
    o: &mut Order,
    chosen: &[usize],
    products: &[Product],
    method_id: &str,
    seq: u64,
    now: Millis,
) {
    let delivered = o
        .fulfillments
        .iter()
        .filter_map(|f| f.delivered_at)
        .max()
        .unwrap_or(now);
    let since = now - delivered;
    let roll: f64 = rng.random();
    if since > RETURN_WINDOW_MS || roll >= 0.08 || since < HOUR {
        return;
    }
    let at = delivered + rng.random_range(HOUR / 2..since);
    if roll < 0.05 {
        let k = rng.random_range(1..=o.items.len());
        let mut lines = rand::seq::index::sample(rng, o.items.len(), k).into_vec();
        lines.sort_unstable();
        let mut item_ids: Vec<String> = lines
            .iter()
            .map(|&i| o.items[i].variant_id.clone())
            .collect();
        item_ids.sort();
        let refund = lines
            .iter()
            .map(|&i| o.items[i].price * o.items[i].quantity)
            .sum();
        o.status = OrderStatus::ReturnRequested;
        o.returns.push(ReturnRequest {
            id: format!("ret_{seq}"),
            order_id: o.id.clone(),
            item_ids,
            payment_method_id: method_id.into(),
            status: "requested".into(),
            refund,
            currency: USD.into(),
            created_at: Some(at),
        });
    } else {
        let line = rng.random_range(0..o.items.len());
        let item = &o.items[line];
        let Some(p) = products.get(chosen[line]) else {
            return;
        };
        let options: Vec<&Variant> = p
            .variants
            .iter()
            .filter(|v| v.available && v.id != item.variant_id)
            .collect();
        if options.is_empty() {
            return;
        }
        let new = *pick(rng, &options);
        o.status = OrderStatus::ExchangeRequested;
        o.exchanges.push(ExchangeRequest {
            id: format!("exc_{seq}"),
            order_id: o.id.clone(),
            item_ids: vec![item.variant_id.clone()],
            new_item_ids: vec![new.id.clone()],
            payment_method_id: method_id.into(),
            status: "requested".into(),
            price_difference: (new.price - item.price) * item.quantity,
            currency: USD.into(),
            created_at: Some(at),
        });
    }
    o.updated_at = Some(at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::policy::{ActionKind, Policy};
    use std::collections::{HashMap, HashSet};

    /// 2025-06-15 12:00 UTC.
    const NOW: Millis = 1_749_988_800_000;

    fn store() -> DemoStore {
        generate(7, NOW, DemoSize::default())
    }

    #[test]
    fn same_seed_same_store_and_different_seed_differs() {
        let a = store();
        assert_eq!(a, store());
        let b = generate(8, NOW, DemoSize::default());
        assert_ne!(a.orders, b.orders);
        assert_ne!(a.customers, b.customers);
        assert_ne!(a.products[0].id, b.products[0].id);
        // The catalogue depends on the seed only, not on the size.
        assert_eq!(
            a.products,
            generate(7, NOW, DemoSize::with_orders(10)).products
        );
    }

    #[test]
    fn sizes_hold() {
        let s = store();
        assert!(s.customers.len() >= 500 && s.orders.len() >= 2_000);
        assert!((35..=45).contains(&s.products.len()));
        let with_orders: HashSet<&str> = s
            .orders
            .iter()
            .filter_map(|o| o.customer_id.as_deref())
            .collect();
        assert_eq!(
            with_orders.len(),
            s.customers.len(),
            "every customer has an order"
        );
        let small = generate(
            1,
            NOW,
            DemoSize {
                customers: 0,
                orders: 3,
            },
        );
        assert_eq!((small.customers.len(), small.orders.len()), (1, 3));
        let empty = generate(
            1,
            NOW,
            DemoSize {
                customers: 5,
                orders: 0,
            },
        );
        assert!(empty.orders.is_empty() && empty.customers.len() == 5);
    }

    #[test]
    fn dates_are_within_the_window_and_in_order() {
        let s = store();
        let start = NOW - WINDOW_DAYS * DAY_MS;
        let inside = |t: Option<Millis>, what: &str| {
            let t = t.unwrap_or_else(|| panic!("{what} missing"));
            assert!((start..=NOW).contains(&t), "{what} {t} outside the window");
            t
        };
        for c in &s.customers {
            inside(c.created_at, "customer created_at");
        }
        for o in &s.orders {
            let created = inside(o.created_at, "created_at");
            inside(o.updated_at, "updated_at");
            for f in &o.fulfillments {
                let shipped = inside(f.shipped_at, "shipped_at");
                assert!(shipped > created, "{}: shipped before created", o.number);
                assert!(crate::commerce::policy::is_business_day(shipped));
                if let Some(d) = f.delivered_at {
                    assert!(inside(Some(d), "delivered_at") > shipped, "{}", o.number);
                }
                assert!(f.estimated_at.is_some_and(|e| e > shipped));
            }
            if let Some(c) = o.cancelled_at {
                assert!(inside(Some(c), "cancelled_at") > created);
            }
            for r in &o.returns {
                inside(r.created_at, "return created_at");
            }
            for p in &o.payments {
                inside(p.created_at, "payment created_at");
            }
            match o.status {
                OrderStatus::Delivered
                | OrderStatus::ReturnRequested
                | OrderStatus::ExchangeRequested => {
                    assert!(!o.fulfillments.is_empty());
                    assert!(
                        o.fulfillments.iter().all(|f| f.delivered_at.is_some()),
                        "{}",
                        o.number
                    );
                }
                OrderStatus::Processed => {
                    assert!(o.fulfillments.iter().any(|f| f.delivered_at.is_none()));
                }
                OrderStatus::Pending | OrderStatus::Cancelled => assert!(o.fulfillments.is_empty()),
            }
        }
    }

    #[test]
    fn statuses_follow_the_brand_policy() {
        let s = store();
        let policy = Policy::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/brand/policy.toml"
        )))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut counts: HashMap<OrderStatus, usize> = HashMap::new();
        for o in &s.orders {
            *counts.entry(o.status).or_default() += 1;
            if o.status == OrderStatus::Cancelled {
                let reason = o.cancel_reason.as_deref().unwrap_or_default();
                assert!(policy.cancel_reason_allowed(reason), "{reason}");
                let refund: Minor = o
                    .payments
                    .iter()
                    .filter(|p| p.kind == PaymentKind::Refund)
                    .map(|p| p.amount)
                    .sum();
                assert_eq!(refund, o.total);
            }
            let delivered = o.fulfillments.iter().filter_map(|f| f.delivered_at).max();
            let requested = o
                .returns
                .iter()
                .map(|r| r.created_at)
                .chain(o.exchanges.iter().map(|e| e.created_at))
                .next();
            if let Some(at) = requested {
                let at = at.unwrap_or_default();
                assert!(
                    policy.within_window(ActionKind::ReturnItems, delivered, at),
                    "{}",
                    o.number
                );
            }
            for e in &o.exchanges {
                let p = s
                    .products
                    .iter()
                    .find(|p| p.variants.iter().any(|v| v.id == e.item_ids[0]));
                assert!(p.is_some_and(|p| {
                    p.variants
                        .iter()
                        .any(|v| v.id == e.new_item_ids[0] && v.available)
                }));
            }
        }
        for st in OrderStatus::ALL {
            assert!(
                counts.get(&st).copied().unwrap_or(0) > 0,
                "no {st} orders: {counts:?}"
            );
        }
        assert!(s.orders.iter().any(|o| o.items_modified));
    }

    fn ups_ok(t: &str) -> bool {
        t.len() == 18
            && t.starts_with("1Z")
            && t[2..]
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            && t[17..].parse::<u32>() == Ok(ups_check(&t[2..17]))
    }

    #[test]
    fn tracking_numbers_match_their_carrier() {
        let s = store();
        let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
        let mut seen = HashSet::new();
        for f in s.orders.iter().flat_map(|o| &o.fulfillments) {
            let t = f.tracking_numbers[0].as_str();
            let ok = match f.carrier.as_deref().unwrap_or_default() {
                "UPS" => ups_ok(t),
                "USPS" => {
                    t.len() == 22
                        && all_digits(t)
                        && (t.starts_with("9400") || t.starts_with("9205"))
                }
                "FedEx" => t.len() == 12 && all_digits(t),
                "DHL" => {
                    t.len() == 10
                        && all_digits(t)
                        && t[9..].parse::<u64>().ok() == t[..9].parse::<u64>().ok().map(|b| b % 7)
                }
                other => panic!("unknown carrier {other}"),
            };
            assert!(ok, "{:?} {t}", f.carrier);
            seen.insert(f.carrier.clone());
            assert!(f.tracking_urls[0].contains(t));
        }
        assert_eq!(seen.len(), 4, "all four carriers are used");
        // The UPS check digit against the commonly published sample number.
        assert!(ups_ok("1Z999AA10123456784"));
    }

    #[test]
    fn ids_and_numbers_are_unique_and_well_formed() {
        let s = store();
        let numbers: HashSet<&str> = s.orders.iter().map(|o| o.number.as_str()).collect();
        assert_eq!(numbers.len(), s.orders.len());
        for o in &s.orders {
            assert!(
                o.number.len() == 9
                    && o.number.starts_with("#D")
                    && o.number[2..].chars().all(|c| c.is_ascii_digit())
            );
        }
        let ten = |id: &str| id.len() == 10 && id.chars().all(|c| c.is_ascii_digit());
        let mut pv = HashSet::new();
        for p in &s.products {
            assert!(ten(&p.id) && pv.insert(p.id.clone()));
            assert!((2..=3).contains(&p.option_names.len()), "{}", p.name);
            assert!(p.variants.len() >= 4, "{}", p.name);
            for v in &p.variants {
                assert!(ten(&v.id) && pv.insert(v.id.clone()));
                assert_eq!(v.available, v.stock.unwrap_or(0) > 0);
                assert!(v.price > 0);
            }
        }
        assert!(
            s.products
                .iter()
                .flat_map(|p| &p.variants)
                .any(|v| !v.available)
        );
        let cats: HashSet<_> = s
            .products
            .iter()
            .filter_map(|p| p.product_type.as_deref())
            .collect();
        assert_eq!(cats.len(), 5);
        let ids: HashSet<&str> = s.customers.iter().map(|c| c.id.as_str()).collect();
        let emails: HashSet<&str> = s
            .customers
            .iter()
            .filter_map(|c| c.primary_email())
            .collect();
        assert_eq!(
            (ids.len(), emails.len()),
            (s.customers.len(), s.customers.len())
        );
        let mut methods = HashSet::new();
        for c in &s.customers {
            let (f, l) = (slug(&c.first_name), slug(&c.last_name));
            assert!(c.id.starts_with(&format!("{f}_{l}_")), "{}", c.id);
            let e = c.primary_email().unwrap_or_default();
            assert!(
                e.starts_with(&format!("{f}.{l}"))
                    && (e.ends_with("@example.com") || e.ends_with("@example.org")),
                "{e}"
            );
            let a = &c.addresses[0];
            assert!(
                a.zip.len() == 5
                    && a.zip.chars().all(|ch| ch.is_ascii_digit())
                    && a.state.len() == 2
            );
            assert!(
                c.phones[0].len() == 12 && c.phones[0][3..].starts_with("-555-01"),
                "{}",
                c.phones[0]
            );
            assert!((1..=3).contains(&c.payment_methods.len()));
            for m in &c.payment_methods {
                assert!(
                    methods.insert(m.id.clone()),
                    "duplicate payment id {}",
                    m.id
                );
                assert!(m.id.starts_with(&m.kind));
                assert_eq!(
                    m.kind == "credit_card",
                    m.last_four.is_some() && m.brand.is_some()
                );
                assert_eq!(m.is_gift_card(), m.balance.is_some());
            }
            assert_eq!(c.source, "demo");
        }
    }

    #[test]
    fn orders_reference_the_catalogue_and_their_customer() {
        let s = store();
        let variants: HashMap<&str, (&Product, &Variant)> = s
            .products
            .iter()
            .flat_map(|p| p.variants.iter().map(move |v| (v.id.as_str(), (p, v))))
            .collect();
        let customers: HashMap<&str, &Customer> =
            s.customers.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut positions: HashMap<&str, Vec<i64>> = HashMap::new();
        for o in &s.orders {
            assert!((1..=4).contains(&o.items.len()));
            for i in &o.items {
                let (p, v) = variants
                    .get(i.variant_id.as_str())
                    .unwrap_or_else(|| panic!("unknown variant {}", i.variant_id));
                assert_eq!(
                    (&p.id, &p.name, i.price, &i.options),
                    (&i.product_id, &i.name, v.price, &v.options)
                );
                assert!((1..=2).contains(&i.quantity));
            }
            assert_eq!(o.total, o.items_total());
            let c = customers
                .get(o.customer_id.as_deref().unwrap_or_default())
                .unwrap_or_else(|| panic!("{} has no customer", o.number));
            assert_eq!(o.shipping_address.as_ref(), c.addresses.first());
            assert_eq!(o.email.as_deref(), c.primary_email());
            assert!(
                c.payment_methods
                    .iter()
                    .any(|m| m.id == o.payments[0].payment_method_id)
            );
            assert_eq!(
                (o.payments[0].kind, o.payments[0].amount),
                (PaymentKind::Payment, o.total)
            );
            positions.entry(c.id.as_str()).or_default().push(o.position);
            assert_eq!(o.source, "demo");
        }
        for (c, mut p) in positions {
            p.sort_unstable();
            assert_eq!(p, (0..p.len() as i64).collect::<Vec<_>>(), "{c}");
        }
    }

    #[test]
    fn large_stores_stay_unique() {
        let s = generate(3, NOW, DemoSize::with_orders(20_000));
        assert_eq!(s.orders.len(), 20_000);
        let numbers: HashSet<&str> = s.orders.iter().map(|o| o.number.as_str()).collect();
        let ids: HashSet<&str> = s.customers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!((numbers.len(), ids.len()), (20_000, 5_000));
    }
}
