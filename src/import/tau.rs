//! τ-bench retail JSON ↔ Concierge's model. Reads a τ-bench v1 folder (users.json,
//! products.json, orders.json) or a τ2 `db.json`, including the fields τ-bench's write tools add
//! (cancel_reason, return_*, exchange_*), and writes model values back in τ-bench's exact keys,
//! key order and value types, so an import followed by an export reproduces the files. Pure
//! conversion apart from reading the folder's files; no store, no network.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value, json};

use super::{ImportBatch, ImportError, decode, read};
use crate::commerce::model::{
    Address, Customer, ExchangeRequest, Fulfillment, Minor, Order, OrderItem, OrderStatus,
    PaymentEntry, PaymentKind, PaymentMethod, Product, ReturnRequest, Variant, minor_from_f64,
    minor_to_f64,
};

const SOURCE: &str = "tau";
const CURRENCY: &str = "USD";
const ITEM_MODIFIED: &str = "pending (item modified)";

/// Reads a τ-bench v1 retail folder. A folder holding only a τ2 `db.json` is read as that.
pub fn parse_folder(dir: &Path) -> Result<ImportBatch, ImportError> {
    let db = dir.join("db.json");
    if !dir.join("users.json").exists() && db.is_file() {
        return parse_db(&db.display().to_string(), &read(&db)?);
    }
    let load = |name: &str| -> Result<(String, Value), ImportError> {
        let path = dir.join(name);
        let label = path.display().to_string();
        if !path.is_file() {
            return Err(ImportError::new(
                label,
                "missing: a τ-bench retail folder needs users.json, products.json and orders.json",
            ));
        }
        let value = parse_json(&label, &read(&path)?)?;
        Ok((label, value))
    };
    let (users_file, users) = load("users.json")?;
    let (products_file, products) = load("products.json")?;
    let (orders_file, orders) = load("orders.json")?;
    build(
        (
            Source {
                file: &users_file,
                what: "user",
            },
            users,
        ),
        (
            Source {
                file: &products_file,
                what: "product",
            },
            products,
        ),
        (
            Source {
                file: &orders_file,
                what: "order",
            },
            orders,
        ),
    )
}

/// Reads a τ2 `db.json`: `{"products":{…},"users":{…},"orders":{…}}`. Record indexes in errors
/// count within the section.
pub fn parse_db(file: &str, bytes: &[u8]) -> Result<ImportBatch, ImportError> {
    let Value::Object(mut db) = parse_json(file, bytes)? else {
        return Err(ImportError::new(
            file,
            "expected an object with `products`, `users` and `orders`",
        ));
    };
    let mut section = |key: &str, what| {
        let value = db.remove(key).ok_or_else(|| {
            ImportError::new(file, format!("missing the `{key}` section")).in_field(key)
        })?;
        Ok::<_, ImportError>((Source { file, what }, value))
    };
    let users = section("users", "user")?;
    let products = section("products", "product")?;
    let orders = section("orders", "order")?;
    build(users, products, orders)
}

/// τ-bench v1 JSON for the given records: `(users, orders, products)`, each an object keyed by
/// id in τ-bench's key order. A user's `orders` list follows [`Order::position`].
pub fn export(
    customers: &[Customer],
    products: &[Product],
    orders: &[Order],
) -> (Value, Value, Value) {
    (
        users_json(customers, orders, Flavor::V1),
        orders_json(orders, Flavor::V1),
        products_json(products),
    )
}

/// τ2 `db.json` for the given records (users carry `user_id`; key order and the type of gift
/// card balances follow τ2).
pub fn export_db(customers: &[Customer], products: &[Product], orders: &[Order]) -> Value {
    json!({
        "products": products_json(products),
        "users": users_json(customers, orders, Flavor::Tau2),
        "orders": orders_json(orders, Flavor::Tau2),
    })
}

// ---------------------------------------------------------------------------------------------
// Reading

fn parse_json(file: &str, bytes: &[u8]) -> Result<Value, ImportError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImportError::new(file, format!("not valid JSON: {e}")))
}

/// Where a keyed collection (users, products or orders) comes from, for its errors.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    file: &'a str,
    /// "user", "product" or "order".
    what: &'static str,
}

impl Source<'_> {
    /// The records of a collection, decoded, with their keys.
    fn records<T: DeserializeOwned>(self, value: Value) -> Result<Vec<(String, T)>, ImportError> {
        let Value::Object(records) = value else {
            let message = format!("expected an object of {}s keyed by id", self.what);
            return Err(ImportError::new(self.file, message));
        };
        records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| match decode(self.file, i, value) {
                Ok(record) => Ok((key, record)),
                Err(e) => Err(ImportError {
                    message: format!("{} {key:?}: {}", self.what, e.message),
                    ..e
                }),
            })
            .collect()
    }

    /// An error about record `index`, keyed `key`.
    fn error(
        self,
        index: usize,
        key: &str,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> ImportError {
        ImportError::new(self.file, format!("{} {key:?}: {message}", self.what))
            .at(index)
            .in_field(field)
    }
}

/// An amount as τ-bench writes it: a JSON number with at most two decimals.
#[derive(Debug, Clone, Copy)]
struct Amount(Minor);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let x = f64::deserialize(d)?;
        minor_from_f64(x).map(Amount).ok_or_else(|| {
            D::Error::custom(format!("{x} is not an amount with at most two decimals"))
        })
    }
}

/// A JSON object read with its key order kept.
struct Keyed<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Keyed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keyed<T>, D::Error> {
        struct KeyedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for KeyedVisitor<T> {
            type Value = Keyed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keyed<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Keyed(out))
            }
        }
        d.deserialize_map(KeyedVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
struct RawUser {
    /// τ2 only; equals the key.
    user_id: Option<String>,
    name: RawName,
    address: RawAddress,
    email: String,
    payment_methods: Keyed<RawPaymentMethod>,
    orders: Vec<String>,
}

#[derive(Deserialize)]
struct RawName {
    first_name: String,
    last_name: String,
}

#[derive(Deserialize)]
struct RawAddress {
    address1: String,
    address2: String,
    city: String,
    country: String,
    state: String,
    zip: String,
}

#[derive(Deserialize)]
struct RawPaymentMethod {
    source: String,
    id: Option<String>,
    brand: Option<String>,
    last_four: Option<String>,
    balance: Option<Amount>,
}

#[derive(Deserialize)]
struct RawOrder {
    order_id: String,
    user_id: String,
    address: RawAddress,
    items: Vec<RawItem>,
    fulfillments: Vec<RawFulfillment>,
    status: String,
    payment_history: Vec<RawPayment>,
    cancel_reason: Option<String>,
    return_items: Option<Vec<String>>,
    return_payment_method_id: Option<String>,
    exchange_items: Option<Vec<String>>,
    exchange_new_items: Option<Vec<String>>,
    exchange_payment_method_id: Option<String>,
    exchange_price_difference: Option<Amount>,
}

#[derive(Deserialize)]
struct RawItem {
    name: String,
    product_id: String,
    item_id: String,
    price: Amount,
    options: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawFulfillment {
    tracking_id: Vec<String>,
    item_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawPayment {
    transaction_type: String,
    amount: Amount,
    payment_method_id: String,
}

#[derive(Deserialize)]
struct RawProduct {
    name: String,
    product_id: String,
    variants: Keyed<RawVariant>,
}

#[derive(Deserialize)]
struct RawVariant {
    item_id: String,
    options: Map<String, Value>,
    available: bool,
    price: Amount,
}

fn address(a: RawAddress) -> Address {
    Address {
        name: String::new(),
        address1: a.address1,
        address2: a.address2,
        city: a.city,
        state: a.state,
        country: a.country,
        zip: a.zip,
        phone: String::new(),
    }
}

/// Converts and cross-checks the three collections: keys match the ids inside, every order
/// belongs to a known user, and every order a user lists exists and is theirs.
fn build(
    (users_src, users): (Source, Value),
    (products_src, products): (Source, Value),
    (orders_src, orders): (Source, Value),
) -> Result<ImportBatch, ImportError> {
    let users: Vec<(String, RawUser)> = users_src.records(users)?;
    let products: Vec<(String, RawProduct)> = products_src.records(products)?;
    let orders: Vec<(String, RawOrder)> = orders_src.records(orders)?;

    // order id → (user index, position in that user's list)
    let mut listed: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, (key, u)) in users.iter().enumerate() {
        if u.user_id.as_ref().is_some_and(|id| id != key) {
            return Err(users_src.error(i, key, "user_id", "does not match the user's key"));
        }
        for (pm_key, pm) in &u.payment_methods.0 {
            if pm.id.as_ref().is_some_and(|id| id != pm_key) {
                let field = format!("payment_methods.{pm_key}.id");
                return Err(users_src.error(i, key, field, "does not match its key"));
            }
        }
        for (j, oid) in u.orders.iter().enumerate() {
            if listed.insert(oid, (i, j)).is_some() {
                return Err(users_src.error(
                    i,
                    key,
                    format!("orders[{j}]"),
                    format!("order {oid:?} is listed twice"),
                ));
            }
        }
    }
    let user_index: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();

    let mut batch = ImportBatch::default();
    let mut unlisted = vec![0usize; users.len()];
    let mut found: HashSet<String> = HashSet::new();
    for (i, (key, o)) in orders.into_iter().enumerate() {
        let fail = |field: &str, message: String| orders_src.error(i, &key, field, message);
        if o.order_id != key {
            return Err(fail("order_id", "does not match the order's key".into()));
        }
        let Some(&owner) = user_index.get(o.user_id.as_str()) else {
            return Err(fail("user_id", format!("no user {:?}", o.user_id)));
        };
        let position = match listed.get(key.as_str()) {
            Some(&(u, j)) if u == owner => j,
            Some(&(u, _)) => {
                let message = format!("but listed in the orders of user {:?}", users[u].0);
                return Err(fail("user_id", message));
            }
            None => {
                unlisted[owner] += 1;
                users[owner].1.orders.len() + unlisted[owner] - 1
            }
        };
        let converted = order(&key, o, position).map_err(|(field, msg)| fail(&field, msg))?;
        batch.orders.push(converted);
        found.insert(key);
    }
    for (i, (key, u)) in users.iter().enumerate() {
        if let Some(j) = u
            .orders
            .iter()
            .position(|oid| !found.contains(oid.as_str()))
        {
            let message = format!("order {:?} is not among the orders", u.orders[j]);
            return Err(users_src.error(i, key, format!("orders[{j}]"), message));
        }
    }

    for (i, (key, p)) in products.into_iter().enumerate() {
        if p.product_id != key {
            return Err(products_src.error(
                i,
                &key,
                "product_id",
                "does not match the product's key",
            ));
        }
        if let Some((vk, _)) = p.variants.0.iter().find(|(vk, v)| *vk != v.item_id) {
            let field = format!("variants.{vk}.item_id");
            return Err(products_src.error(i, &key, field, "does not match its key"));
        }
        batch.products.push(product(p));
    }
    batch.customers = users.into_iter().map(|(key, u)| customer(key, u)).collect();
    Ok(batch)
}

fn customer(key: String, u: RawUser) -> Customer {
    Customer {
        id: key,
        source: SOURCE.to_string(),
        first_name: u.name.first_name,
        last_name: u.name.last_name,
        emails: vec![u.email],
        phones: Vec::new(),
        addresses: vec![address(u.address)],
        payment_methods: u
            .payment_methods
            .0
            .into_iter()
            .map(|(id, pm)| PaymentMethod {
                id,
                kind: pm.source,
                brand: pm.brand,
                last_four: pm.last_four,
                balance: pm.balance.map(|b| b.0),
                currency: CURRENCY.to_string(),
            })
            .collect(),
        note: None,
        created_at: None,
        updated_at: None,
    }
}

fn product(p: RawProduct) -> Product {
    let option_names = p
        .variants
        .0
        .first()
        .map(|(_, v)| v.options.keys().cloned().collect())
        .unwrap_or_default();
    let variants = p
        .variants
        .0
        .into_iter()
        .map(|(id, v)| Variant {
            id,
            product_id: p.product_id.clone(),
            title: None,
            sku: None,
            options: v.options,
            price: v.price.0,
            currency: CURRENCY.to_string(),
            available: v.available,
            stock: None,
        })
        .collect();
    Product {
        id: p.product_id,
        source: SOURCE.to_string(),
        product_type: Some(p.name.clone()),
        name: p.name,
        vendor: None,
        description: None,
        tags: Vec::new(),
        option_names,
        variants,
        created_at: None,
        updated_at: None,
    }
}

/// The prices of `ids` as items of the order, each item used once; the error names the first id
/// that is not (or no longer) in the order.
fn prices_of(items: &[OrderItem], ids: &[String], field: &str) -> Result<Minor, (String, String)> {
    let mut used = vec![false; items.len()];
    let mut total = 0;
    for (j, id) in ids.iter().enumerate() {
        let Some(k) = (0..items.len()).find(|&k| !used[k] && items[k].variant_id == *id) else {
            return Err((
                format!("{field}[{j}]"),
                format!("item {id:?} is not in this order"),
            ));
        };
        used[k] = true;
        total += items[k].price;
    }
    Ok(total)
}

fn required<T>(value: Option<T>, field: &str, because: &str) -> Result<T, (String, String)> {
    value.ok_or_else(|| {
        (
            field.to_string(),
            format!("missing, but `{because}` is set"),
        )
    })
}

/// Converts one order (keyed `key`, at `position` in its user's list); an error is
/// `(field, message)`.
fn order(key: &str, o: RawOrder, position: usize) -> Result<Order, (String, String)> {
    let (status, items_modified) = match o.status.as_str() {
        ITEM_MODIFIED => (OrderStatus::Pending, true),
        other => match OrderStatus::parse(other) {
            Some(s) => (s, false),
            None => return Err(("status".into(), format!("unknown status {other:?}"))),
        },
    };
    let items: Vec<OrderItem> = o
        .items
        .into_iter()
        .map(|i| OrderItem {
            line_id: None,
            variant_id: i.item_id,
            product_id: i.product_id,
            name: i.name,
            options: i.options,
            sku: None,
            price: i.price.0,
            quantity: 1,
        })
        .collect();
    let mut payments = Vec::new();
    for (j, p) in o.payment_history.into_iter().enumerate() {
        let Some(kind) = PaymentKind::parse(&p.transaction_type) else {
            let field = format!("payment_history[{j}].transaction_type");
            let message = format!("unknown transaction type {:?}", p.transaction_type);
            return Err((field, message));
        };
        payments.push(PaymentEntry {
            kind,
            amount: p.amount.0,
            payment_method_id: p.payment_method_id,
            created_at: None,
        });
    }
    let mut returns = Vec::new();
    if let Some(item_ids) = o.return_items {
        let refund = prices_of(&items, &item_ids, "return_items")?;
        let method = o.return_payment_method_id;
        returns.push(ReturnRequest {
            id: format!("ret-{key}"),
            order_id: key.to_string(),
            item_ids,
            payment_method_id: required(method, "return_payment_method_id", "return_items")?,
            status: "requested".to_string(),
            refund,
            currency: CURRENCY.to_string(),
            created_at: None,
        });
    }
    let mut exchanges = Vec::new();
    if let Some(item_ids) = o.exchange_items {
        prices_of(&items, &item_ids, "exchange_items")?;
        let because = "exchange_items";
        exchanges.push(ExchangeRequest {
            id: format!("exc-{key}"),
            order_id: key.to_string(),
            item_ids,
            new_item_ids: required(o.exchange_new_items, "exchange_new_items", because)?,
            payment_method_id: required(
                o.exchange_payment_method_id,
                "exchange_payment_method_id",
                because,
            )?,
            status: "requested".to_string(),
            price_difference: required(
                o.exchange_price_difference,
                "exchange_price_difference",
                because,
            )?
            .0,
            currency: CURRENCY.to_string(),
            created_at: None,
        });
    }
    Ok(Order {
        id: key.to_string(),
        number: key.to_string(),
        source: SOURCE.to_string(),
        customer_id: Some(o.user_id),
        email: None,
        status,
        items_modified,
        currency: CURRENCY.to_string(),
        total: items.iter().map(|i| i.price).sum(),
        items,
        shipping_address: Some(address(o.address)),
        fulfillments: o
            .fulfillments
            .into_iter()
            .map(|f| Fulfillment {
                tracking_numbers: f.tracking_id,
                item_ids: f.item_ids,
                ..Fulfillment::default()
            })
            .collect(),
        payments,
        cancel_reason: o.cancel_reason,
        created_at: None,
        updated_at: None,
        cancelled_at: None,
        position: i64::try_from(position).unwrap_or(i64::MAX),
        returns,
        exchanges,
        refunds: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

/// τ-bench v1 and τ2 differ only in key order, τ2's `user_id` on users, and gift card balances
/// (v1 writes whole balances as integers, τ2 always as floats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V1,
    Tau2,
}

fn money(amount: Minor) -> Value {
    Value::from(minor_to_f64(amount))
}

fn address_json(a: Option<&Address>) -> Value {
    let a = a.cloned().unwrap_or_default();
    json!({
        "address1": a.address1,
        "address2": a.address2,
        "city": a.city,
        "country": a.country,
        "state": a.state,
        "zip": a.zip,
    })
}

fn payment_method_json(pm: &PaymentMethod, flavor: Flavor) -> Value {
    let mut m = Map::new();
    m.insert("source".into(), pm.kind.clone().into());
    if flavor == Flavor::Tau2 {
        m.insert("id".into(), pm.id.clone().into());
    }
    if let Some(brand) = &pm.brand {
        m.insert("brand".into(), brand.clone().into());
    }
    if let Some(last_four) = &pm.last_four {
        m.insert("last_four".into(), last_four.clone().into());
    }
    if let Some(balance) = pm.balance {
        let value = match flavor {
            Flavor::V1 if balance % 100 == 0 => Value::from(balance / 100),
            _ => money(balance),
        };
        m.insert("balance".into(), value);
    }
    if flavor == Flavor::V1 {
        m.insert("id".into(), pm.id.clone().into());
    }
    Value::Object(m)
}

fn users_json(customers: &[Customer], orders: &[Order], flavor: Flavor) -> Value {
    let mut by_customer: HashMap<&str, Vec<&Order>> = HashMap::new();
    for o in orders {
        if let Some(c) = &o.customer_id {
            by_customer.entry(c).or_default().push(o);
        }
    }
    let mut users = Map::new();
    for c in customers {
        let mut listed = by_customer.remove(c.id.as_str()).unwrap_or_default();
        listed.sort_by_key(|o| o.position);
        let mut u = Map::new();
        if flavor == Flavor::Tau2 {
            u.insert("user_id".into(), c.id.clone().into());
        }
        u.insert(
            "name".into(),
            json!({"first_name": c.first_name, "last_name": c.last_name}),
        );
        u.insert("address".into(), address_json(c.addresses.first()));
        u.insert("email".into(), c.primary_email().unwrap_or("").into());
        let methods = c
            .payment_methods
            .iter()
            .map(|pm| (pm.id.clone(), payment_method_json(pm, flavor)))
            .collect();
        u.insert("payment_methods".into(), Value::Object(methods));
        let ids: Vec<Value> = listed.iter().map(|o| o.id.clone().into()).collect();
        u.insert("orders".into(), ids.into());
        users.insert(c.id.clone(), Value::Object(u));
    }
    Value::Object(users)
}

fn order_json(o: &Order, flavor: Flavor) -> Value {
    let items: Vec<Value> = o
        .items
        .iter()
        .flat_map(|i| {
            let unit = json!({
                "name": i.name,
                "product_id": i.product_id,
                "item_id": i.variant_id,
                "price": money(i.price),
                "options": i.options,
            });
            std::iter::repeat_n(unit, usize::try_from(i.quantity).unwrap_or(0))
        })
        .collect();
    let fulfillments: Vec<Value> = o
        .fulfillments
        .iter()
        .map(|f| json!({"tracking_id": f.tracking_numbers, "item_ids": f.item_ids}))
        .collect();
    let payments: Vec<Value> = o
        .payments
        .iter()
        .map(|p| {
            json!({
                "transaction_type": p.kind.as_str(),
                "amount": money(p.amount),
                "payment_method_id": p.payment_method_id,
            })
        })
        .collect();
    let status = if o.items_modified && o.status == OrderStatus::Pending {
        ITEM_MODIFIED
    } else {
        o.status.as_str()
    };

    let mut m = Map::new();
    m.insert("order_id".into(), o.id.clone().into());
    m.insert(
        "user_id".into(),
        o.customer_id.clone().unwrap_or_default().into(),
    );
    m.insert("address".into(), address_json(o.shipping_address.as_ref()));
    m.insert("items".into(), items.into());
    if flavor == Flavor::Tau2 {
        m.insert("status".into(), status.into());
    }
    m.insert("fulfillments".into(), fulfillments.into());
    if flavor == Flavor::V1 {
        m.insert("status".into(), status.into());
    }
    m.insert("payment_history".into(), payments.into());
    if let Some(reason) = &o.cancel_reason {
        m.insert("cancel_reason".into(), reason.clone().into());
    }
    if let Some(r) = o.returns.first() {
        m.insert("return_items".into(), json!(r.item_ids));
        m.insert(
            "return_payment_method_id".into(),
            r.payment_method_id.clone().into(),
        );
    }
    if let Some(x) = o.exchanges.first() {
        m.insert("exchange_items".into(), json!(x.item_ids));
        m.insert("exchange_new_items".into(), json!(x.new_item_ids));
        m.insert(
            "exchange_payment_method_id".into(),
            x.payment_method_id.clone().into(),
        );
        m.insert(
            "exchange_price_difference".into(),
            money(x.price_difference),
        );
    }
    Value::Object(m)
}

fn orders_json(orders: &[Order], flavor: Flavor) -> Value {
    Value::Object(
        orders
            .iter()
            .map(|o| (o.id.clone(), order_json(o, flavor)))
            .collect(),
    )
}

fn products_json(products: &[Product]) -> Value {
    let mut out = Map::new();
    for p in products {
        let variants: Map<String, Value> = p
            .variants
            .iter()
            .map(|v| {
                let value = json!({
                    "item_id": v.id,
                    "options": v.options,
                    "available": v.available,
                    "price": money(v.price),
                });
                (v.id.clone(), value)
            })
            .collect();
        let value = json!({"name": p.name, "product_id": p.id, "variants": variants});
        out.insert(p.id.clone(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const DATA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/tau-bench-retail/"
    );

    fn data(rel: &str) -> PathBuf {
        let path = PathBuf::from(format!("{DATA}{rel}"));
        assert!(path.exists(), "missing test data {}", path.display());
        path
    }

    fn json_file(path: &Path) -> Value {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The first place two values differ, for a readable failure.
    fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
                if kx != ky {
                    return Some(format!("{path}: keys {kx:?} vs {ky:?}"));
                }
                x.iter()
                    .find_map(|(k, v)| first_diff(v, &y[k], &format!("{path}.{k}")))
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_diff(v, w, &format!("{path}[{i}]"))),
            _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
        }
    }

    /// Equal as values and in key order.
    fn assert_same(got: &Value, want: &Value, what: &str) {
        if let Some(diff) = first_diff(got, want, what) {
            panic!("export differs at {diff}");
        }
        assert!(got == want, "{what}: values differ");
        assert_eq!(
            got.to_string(),
            want.to_string(),
            "{what}: serialized forms differ"
        );
    }

    fn counts(b: &ImportBatch) -> (usize, usize, usize, usize) {
        let variants = b.products.iter().map(|p| p.variants.len()).sum();
        (
            b.customers.len(),
            b.orders.len(),
            b.products.len(),
            variants,
        )
    }

    #[test]
    fn v1_folder_round_trips() {
        let dir = data("tau-bench-v1");
        let b = parse_folder(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts(&b), (500, 1000, 50, 591));

        let noah = b
            .customers
            .iter()
            .find(|c| c.id == "noah_brown_6181")
            .unwrap();
        assert_eq!(noah.full_name(), "Noah Brown");
        assert_eq!(noah.emails, ["noah.brown7922@example.com"]);
        assert_eq!(noah.addresses[0].zip, "80279");
        let kinds: Vec<&str> = noah
            .payment_methods
            .iter()
            .map(|p| p.kind.as_str())
            .collect();
        assert_eq!(kinds, ["paypal", "credit_card"]);
        assert_eq!(noah.payment_methods[1].last_four.as_deref(), Some("9212"));
        let gift = b
            .customers
            .iter()
            .flat_map(|c| &c.payment_methods)
            .find(|p| p.is_gift_card())
            .unwrap();
        assert!(gift.balance.is_some() && gift.brand.is_none());

        let o = b.orders.iter().find(|o| o.id == "#W2611340").unwrap();
        assert_eq!(
            (o.number.as_str(), o.status),
            ("#W2611340", OrderStatus::Processed)
        );
        assert_eq!(o.customer_id.as_deref(), Some("james_li_5688"));
        assert_eq!(o.items[0].price, 4784);
        assert_eq!(o.total, 4784 + 48881);
        assert_eq!(o.payments[0].amount, 53665);
        assert_eq!(o.fulfillments[0].tracking_numbers, ["357962501027"]);
        let users = json_file(&dir.join("users.json"));
        for o in &b.orders {
            let listed = &users[o.customer_id.as_deref().unwrap()]["orders"];
            assert_eq!(listed[o.position as usize], Value::from(o.id.clone()));
        }

        let t = b.products.iter().find(|p| p.id == "9523456873").unwrap();
        assert_eq!(t.product_type.as_deref(), Some("T-Shirt"));
        assert_eq!(t.option_names, ["color", "size", "material", "style"]);
        assert_eq!(
            (t.variants[0].id.as_str(), t.variants[0].price),
            ("9612497925", 5088)
        );

        let (users_out, orders_out, products_out) = export(&b.customers, &b.products, &b.orders);
        assert_same(&users_out, &users, "users");
        assert_same(&orders_out, &json_file(&dir.join("orders.json")), "orders");
        assert_same(
            &products_out,
            &json_file(&dir.join("products.json")),
            "products",
        );
    }

    #[test]
    fn tau2_db_round_trips() {
        let path = data("tau2-bench-retail/db.json");
        let bytes = std::fs::read(&path).unwrap();
        let b = parse_db("db.json", &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts(&b), (500, 1000, 50, 591));
        assert_same(
            &export_db(&b.customers, &b.products, &b.orders),
            &json_file(&path),
            "db",
        );
        // A folder holding only db.json reads the same.
        let folder = parse_folder(path.parent().unwrap()).unwrap();
        assert_eq!(counts(&folder), (500, 1000, 50, 591));
    }

    /// A τ2 db after the write tools ran: a cancellation, a return, an exchange and a modified
    /// order, plus an order missing from its user's list.
    fn acted_db() -> Value {
        let addr = json!({"address1": "1 A St", "address2": "", "city": "X", "country": "USA",
            "state": "NY", "zip": "10001"});
        let item = |id: &str, price: f64| {
            json!({"name": "Mug", "product_id": "p1",
            "item_id": id, "price": price, "options": {"color": "red"}})
        };
        let paid = |amount: f64| {
            json!([{"transaction_type": "payment", "amount": amount,
            "payment_method_id": "gift_card_1"}])
        };
        let order = |id: &str, status: &str, extra: Value| {
            let mut o = json!({"order_id": id, "user_id": "ann_1", "address": addr,
                "items": [item("i1", 10.5), item("i2", 20.25)], "status": status,
                "fulfillments": [], "payment_history": paid(30.75)});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            o
        };
        json!({
            "products": {"p1": {"name": "Mug", "product_id": "p1", "variants": {
                "i1": {"item_id": "i1", "options": {"color": "red"}, "available": true, "price": 10.5},
                "i2": {"item_id": "i2", "options": {"color": "blue"}, "available": false, "price": 20.25}}}},
            "users": {"ann_1": {"user_id": "ann_1", "name": {"first_name": "Ann", "last_name": "Lee"},
                "address": addr, "email": "ann@example.com",
                "payment_methods": {"gift_card_1": {"source": "gift_card", "id": "gift_card_1", "balance": 12.3}},
                "orders": ["#W2", "#W1", "#W3"]}},
            "orders": {
                "#W1": order("#W1", "cancelled", json!({"cancel_reason": "ordered by mistake"})),
                "#W2": order("#W2", "return requested", json!({"return_items": ["i2"],
                    "return_payment_method_id": "gift_card_1"})),
                "#W3": order("#W3", "exchange requested", json!({"exchange_items": ["i1"],
                    "exchange_new_items": ["i9"], "exchange_payment_method_id": "gift_card_1",
                    "exchange_price_difference": -1.5})),
                "#W4": order("#W4", "pending (item modified)", json!({})),
            }
        })
    }

    #[test]
    fn post_action_fields_round_trip() {
        let db = acted_db();
        let b = parse_db("db.json", db.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let by_id = |id: &str| b.orders.iter().find(|o| o.id == id).unwrap();
        assert_eq!(
            by_id("#W1").cancel_reason.as_deref(),
            Some("ordered by mistake")
        );
        let ret = &by_id("#W2").returns[0];
        assert_eq!(
            (ret.id.as_str(), ret.refund, ret.status.as_str()),
            ("ret-#W2", 2025, "requested")
        );
        let exc = &by_id("#W3").exchanges[0];
        assert_eq!((exc.id.as_str(), exc.price_difference), ("exc-#W3", -150));
        assert_eq!(exc.new_item_ids, ["i9"]);
        let modified = by_id("#W4");
        assert!(modified.items_modified && modified.status == OrderStatus::Pending);
        let positions: Vec<i64> = ["#W1", "#W2", "#W3", "#W4"]
            .iter()
            .map(|id| by_id(id).position)
            .collect();
        assert_eq!(positions, [1, 0, 2, 3]);
        assert_eq!(b.customers[0].payment_methods[0].balance, Some(1230));

        let mut want = db;
        want["users"]["ann_1"]["orders"] = json!(["#W2", "#W1", "#W3", "#W4"]);
        assert_same(
            &export_db(&b.customers, &b.products, &b.orders),
            &want,
            "db",
        );
    }

    #[test]
    fn bad_records_name_index_and_field() {
        let parse = |db: &Value| parse_db("db.json", db.to_string().as_bytes()).unwrap_err();

        let mut db = acted_db();
        db["orders"]["#W3"]["items"][1]["price"] = json!(1.234);
        let e = parse(&db);
        assert_eq!(
            (e.index, e.field.as_deref()),
            (Some(2), Some("items[1].price"))
        );
        assert!(
            e.message
                .starts_with("order \"#W3\": 1.234 is not an amount"),
            "{e}"
        );

        let mut db = acted_db();
        db["orders"]["#W2"]["user_id"] = json!("bob_2");
        let e = parse(&db);
        assert_eq!((e.index, e.field.as_deref()), (Some(1), Some("user_id")));

        let mut db = acted_db();
        db["orders"]["#W2"]["return_items"] = json!(["i2", "i2"]);
        assert_eq!(parse(&db).field.as_deref(), Some("return_items[1]"));

        let mut db = acted_db();
        db["users"]["ann_1"]["orders"] = json!(["#W2", "#W9"]);
        let e = parse(&db);
        assert_eq!((e.index, e.field.as_deref()), (Some(0), Some("orders[1]")));

        let mut db = acted_db();
        db["users"]["ann_1"]["payment_methods"]["gift_card_1"]
            .as_object_mut()
            .unwrap()
            .remove("source");
        let e = parse(&db);
        assert_eq!(
            e.field.as_deref(),
            Some("payment_methods.gift_card_1.source")
        );

        let mut db = acted_db();
        db["orders"]["#W1"]["status"] = json!("lost");
        assert_eq!(parse(&db).field.as_deref(), Some("status"));

        let e = parse_db("db.json", b"{\"users\": {}}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("products"));
    }
}
