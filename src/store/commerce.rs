//! Commerce rows: customers, payment methods, products, variants, orders and everything hung
//! on an order (items, fulfilments, tracking numbers, payment history, returns, exchanges,
//! refunds). Writes replace an order's lines, fulfilments and payment history whole; returns,
//! exchanges and refunds are upserted by id so that ones raised here survive a shop-system sync.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::cache::OrderKey;
use super::changes::{BULK_CHANGES, Change};
use super::{
    Store, StoreError, StoreResult, get_i64, get_json, get_opt_i64, get_opt_json, get_opt_str,
    get_str, to_json,
};
use crate::commerce::{
    Address, Customer, ExchangeRequest, Fulfillment, Order, OrderItem, OrderStatus, PaymentEntry,
    PaymentKind, PaymentMethod, Product, Refund, ReturnRequest, Variant,
};

/// How many rows an import wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    pub customers: u64,
    pub products: u64,
    pub variants: u64,
    pub orders: u64,
}

/// Row counts, for the CLI, health and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    pub customers: i64,
    pub products: i64,
    pub variants: i64,
    pub orders: i64,
    pub conversations: i64,
    pub messages: i64,
}

impl Store {
    /// Writes customers, then products, then orders, in ONE transaction: either all of them
    /// are stored or none. `progress` is called after each record.
    pub async fn import(
        &self,
        customers: &[Customer],
        products: &[Product],
        orders: &[Order],
        mut progress: impl FnMut(u64),
    ) -> StoreResult<ImportCounts> {
        let mut tx = self.begin_write().await?;
        let mut counts = ImportCounts::default();
        let mut done = 0u64;
        let bulk = customers.len() + products.len() + orders.len() > BULK_CHANGES;
        let mut changes = if bulk { vec![Change::All] } else { Vec::new() };
        for c in customers {
            put_customer(&mut tx, c).await?;
            if !bulk {
                changes.push(Change::CustomerOrders(c.id.clone()));
            }
            counts.customers += 1;
            done += 1;
            progress(done);
        }
        for p in products {
            put_product(&mut tx, p).await?;
            if !bulk {
                changes.push(Change::Product(p.id.clone()));
            }
            counts.products += 1;
            counts.variants += p.variants.len() as u64;
            done += 1;
            progress(done);
        }
        let batch_customers: HashSet<&str> = customers.iter().map(|c| c.id.as_str()).collect();
        let mut known: HashSet<String> = HashSet::new();
        for o in orders {
            if let Some(cid) = &o.customer_id
                && !batch_customers.contains(cid.as_str())
                && !known.contains(cid)
            {
                let exists = sqlx::query("SELECT 1 AS one FROM customers WHERE id = $1")
                    .bind(cid.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !exists {
                    return Err(StoreError::Conflict(format!(
                        "order {} belongs to customer {cid}, who is neither in the store nor in this file",
                        o.number
                    )));
                }
                known.insert(cid.clone());
            }
            let previous = put_order(&mut tx, o).await?;
            if !bulk {
                changes.extend(previous.map(Change::OrderGone));
                changes.push(Change::Order(o.number.clone()));
            }
            counts.orders += 1;
            done += 1;
            progress(done);
        }
        self.commit_changes(tx, &changes).await?;
        Ok(counts)
    }

    /// Stores one order (insert or replace), in its own transaction.
    pub async fn put_order(&self, order: &Order) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let previous = put_order(&mut tx, order).await?;
        let mut changed: Vec<Change> = previous.map(Change::OrderGone).into_iter().collect();
        changed.push(Change::Order(order.number.clone()));
        self.commit_changes(tx, &changed).await?;
        Ok(())
    }

    pub async fn put_customer(&self, customer: &Customer) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        put_customer(&mut tx, customer).await?;
        let changed = [Change::CustomerOrders(customer.id.clone())];
        self.commit_changes(tx, &changed).await?;
        Ok(())
    }

    pub async fn put_product(&self, product: &Product) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        put_product(&mut tx, product).await?;
        let changed = [Change::Product(product.id.clone())];
        self.commit_changes(tx, &changed).await?;
        Ok(())
    }

    /// Removes an order and everything hung on it (lines, fulfilments, payments, returns,
    /// exchanges, refunds), as when the shop deletes it. Returns its number, or None when there
    /// was no such order. The audit log keeps its entries.
    pub async fn delete_order(&self, id: &str) -> StoreResult<Option<String>> {
        let mut tx = self.begin_write().await?;
        let number = sqlx::query("DELETE FROM orders WHERE id = $1 RETURNING number")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| get_str(&row, "number"))
            .transpose()?;
        let changed: Vec<Change> = number.iter().cloned().map(Change::OrderGone).collect();
        self.commit_changes(tx, &changed).await?;
        Ok(number)
    }

    /// Removes a product and its variants. False when there was no such product. Orders keep
    /// their lines (they copy the product's name and options).
    pub async fn delete_product(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let changed: Vec<Change> = if gone {
            vec![Change::ProductGone(id.to_string())]
        } else {
            Vec::new()
        };
        self.commit_changes(tx, &changed).await?;
        Ok(gone)
    }

    pub async fn counts(&self) -> StoreResult<StoreCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM customers) AS customers, \
                    (SELECT COUNT(*) FROM products) AS products, \
                    (SELECT COUNT(*) FROM variants) AS variants, \
                    (SELECT COUNT(*) FROM orders) AS orders, \
                    (SELECT COUNT(*) FROM conversations) AS conversations, \
                    (SELECT COUNT(*) FROM messages) AS messages",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreCounts {
            customers: get_i64(&row, "customers")?,
            products: get_i64(&row, "products")?,
            variants: get_i64(&row, "variants")?,
            orders: get_i64(&row, "orders")?,
            conversations: get_i64(&row, "conversations")?,
            messages: get_i64(&row, "messages")?,
        })
    }

    /// An order by what a shopper types: "#W2611340", "W2611340", "w2611340", "1001".
    pub async fn get_order_by_number(&self, number: &str) -> StoreResult<Option<Order>> {
        let number_key = order_number_key(number);
        let key = OrderKey::Number(number_key.clone());
        let epoch = match self.cache.order(&key) {
            Ok(order) => return Ok(order),
            Err(epoch) => epoch,
        };
        let row = sqlx::query("SELECT * FROM orders WHERE number_key = $1")
            .bind(number_key)
            .fetch_optional(&self.pool)
            .await?;
        let order = match row {
            Some(row) => Some(self.complete_order(&row).await?),
            None => None,
        };
        self.cache.keep_order(epoch, key, order.clone());
        Ok(order)
    }

    /// An order as a shopper, an agent or staff refer to it: its id, else its number
    /// ("#W0000000", "W0000000", "1001").
    pub async fn find_order(&self, order_ref: &str) -> StoreResult<Option<Order>> {
        match self.get_order(order_ref.trim()).await? {
            Some(o) => Ok(Some(o)),
            None => self.get_order_by_number(order_ref).await,
        }
    }

    pub async fn get_order(&self, id: &str) -> StoreResult<Option<Order>> {
        let key = OrderKey::Id(id.to_string());
        let epoch = match self.cache.order(&key) {
            Ok(order) => return Ok(order),
            Err(epoch) => epoch,
        };
        let row = sqlx::query("SELECT * FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let order = match row {
            Some(row) => Some(self.complete_order(&row).await?),
            None => None,
        };
        self.cache.keep_order(epoch, key, order.clone());
        Ok(order)
    }

    /// The order carrying a tracking number, if any.
    pub async fn get_order_by_tracking(&self, tracking: &str) -> StoreResult<Option<Order>> {
        let row = sqlx::query(
            "SELECT o.* FROM orders o JOIN tracking_numbers t ON t.order_id = o.id \
             WHERE t.tracking_number = $1 LIMIT 1",
        )
        .bind(tracking.trim())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(self.complete_order(&row).await?)),
            None => Ok(None),
        }
    }

    /// A customer's orders, in the customer's order.
    pub async fn list_customer_orders(&self, customer_id: &str) -> StoreResult<Vec<Order>> {
        let rows = sqlx::query(
            "SELECT * FROM orders WHERE customer_id = $1 ORDER BY position, created_at, id",
        )
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.complete_order(row).await?);
        }
        Ok(out)
    }

    async fn complete_order(&self, row: &AnyRow) -> StoreResult<Order> {
        let mut order = order_from_row(row)?;
        let mut conn = self.pool.acquire().await?;
        super::fast::load_order_lines(&mut conn, &mut order).await?;
        Ok(order)
    }

    pub async fn get_customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        let row = sqlx::query("SELECT * FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut c = customer_from_row(&row)?;
        let emails = sqlx::query(
            "SELECT email FROM customer_emails WHERE customer_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        c.emails = emails
            .iter()
            .map(|r| get_str(r, "email"))
            .collect::<StoreResult<_>>()?;
        let methods =
            sqlx::query("SELECT * FROM payment_methods WHERE customer_id = $1 ORDER BY position")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        c.payment_methods = methods
            .iter()
            .map(payment_method_from_row)
            .collect::<StoreResult<_>>()?;
        Ok(Some(c))
    }

    /// The customer known by this email (any of their emails), case-insensitive.
    pub async fn find_customer_by_email(&self, email: &str) -> StoreResult<Option<Customer>> {
        let row = sqlx::query("SELECT customer_id FROM customer_emails WHERE email = $1")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => self.get_customer(&get_str(&r, "customer_id")?).await,
            None => Ok(None),
        }
    }

    /// Customers with this first and last name (case-insensitive) whose addresses include the
    /// ZIP code.
    pub async fn find_customers_by_name_zip(
        &self,
        first_name: &str,
        last_name: &str,
        zip: &str,
    ) -> StoreResult<Vec<Customer>> {
        let rows = sqlx::query(
            "SELECT id FROM customers WHERE lower(first_name) = $1 AND lower(last_name) = $2",
        )
        .bind(first_name.trim().to_lowercase())
        .bind(last_name.trim().to_lowercase())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(c) = self.get_customer(&get_str(&r, "id")?).await?
                && c.addresses.iter().any(|a| a.zip.trim() == zip.trim())
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    pub async fn get_product(&self, id: &str) -> StoreResult<Option<Product>> {
        let epoch = match self.cache.product(id) {
            Ok(product) => return Ok(product),
            Err(epoch) => epoch,
        };
        let (product, held) = self.load_product(id).await?;
        // A product with stock held for a running settlement is not kept: its availability
        // changes when the hold expires, which no write announces.
        if !held {
            self.cache.keep_product(epoch, id, product.clone());
        }
        Ok(product)
    }

    /// The product, and whether any of its stock is held by a settlement now.
    async fn load_product(&self, id: &str) -> StoreResult<(Option<Product>, bool)> {
        let row = sqlx::query("SELECT * FROM products WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok((None, false));
        };
        let mut p = product_from_row(&row)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM variants v WHERE v.product_id = $1 ORDER BY v.position",
            variant_columns(2)
        )))
        .bind(id)
        .bind(crate::util::now_ms())
        .fetch_all(&self.pool)
        .await?;
        let held = rows
            .iter()
            .any(|r| r.try_get::<i64, _>("held").unwrap_or(0) > 0);
        p.variants = rows
            .iter()
            .map(variant_from_row)
            .collect::<StoreResult<_>>()?;
        Ok((Some(p), held))
    }

    /// Every customer with emails and payment methods, in id order.
    pub async fn all_customers(&self) -> StoreResult<Vec<Customer>> {
        let mut emails: HashMap<String, Vec<String>> = HashMap::new();
        for r in sqlx::query("SELECT customer_id, email FROM customer_emails ORDER BY position")
            .fetch_all(&self.pool)
            .await?
        {
            emails
                .entry(get_str(&r, "customer_id")?)
                .or_default()
                .push(get_str(&r, "email")?);
        }
        let mut methods: HashMap<String, Vec<PaymentMethod>> = HashMap::new();
        for r in sqlx::query("SELECT * FROM payment_methods ORDER BY position")
            .fetch_all(&self.pool)
            .await?
        {
            methods
                .entry(get_str(&r, "customer_id")?)
                .or_default()
                .push(payment_method_from_row(&r)?);
        }
        let rows = sqlx::query("SELECT * FROM customers ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut c = customer_from_row(r)?;
            c.emails = emails.remove(&c.id).unwrap_or_default();
            c.payment_methods = methods.remove(&c.id).unwrap_or_default();
            out.push(c);
        }
        Ok(out)
    }

    /// What a shop page can show from the store: up to `limit` products (in id order, with
    /// their variants) and the number of an order to ask about (a shipped one if any).
    pub async fn showcase(&self, limit: i64) -> StoreResult<(Vec<Product>, Option<String>)> {
        let rows = sqlx::query("SELECT id FROM products ORDER BY id LIMIT $1")
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        let mut products = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(p) = self.get_product(&get_str(r, "id")?).await? {
                products.push(p);
            }
        }
        let order = sqlx::query(
            "SELECT number FROM orders ORDER BY CASE WHEN status = 'processed' THEN 0 ELSE 1 END, id \
             LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let order = order.map(|r| get_str(&r, "number")).transpose()?;
        Ok((products, order))
    }

    /// Every product with its variants, in id order.
    pub async fn all_products(&self) -> StoreResult<Vec<Product>> {
        let mut variants: HashMap<String, Vec<Variant>> = HashMap::new();
        for r in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM variants v ORDER BY v.position",
            variant_columns(1)
        )))
        .bind(crate::util::now_ms())
        .fetch_all(&self.pool)
        .await?
        {
            let v = variant_from_row(&r)?;
            variants.entry(v.product_id.clone()).or_default().push(v);
        }
        let rows = sqlx::query("SELECT * FROM products ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut p = product_from_row(r)?;
            p.variants = variants.remove(&p.id).unwrap_or_default();
            out.push(p);
        }
        Ok(out)
    }

    /// Every order, complete, in id order. Loads each child table once.
    pub async fn all_orders(&self) -> StoreResult<Vec<Order>> {
        async fn grouped<T>(
            store: &Store,
            sql: &'static str,
            f: fn(&AnyRow) -> StoreResult<T>,
        ) -> StoreResult<HashMap<String, Vec<T>>> {
            let mut map: HashMap<String, Vec<T>> = HashMap::new();
            for r in sqlx::query(sql).fetch_all(&store.pool).await? {
                map.entry(get_str(&r, "order_id")?)
                    .or_default()
                    .push(f(&r)?);
            }
            Ok(map)
        }
        let mut items = grouped(
            self,
            "SELECT * FROM order_items ORDER BY order_id, position",
            item_from_row,
        )
        .await?;
        let mut fulfillments = grouped(
            self,
            "SELECT * FROM fulfillments ORDER BY order_id, position",
            fulfillment_from_row,
        )
        .await?;
        let mut payments = grouped(
            self,
            "SELECT * FROM payments ORDER BY order_id, position",
            payment_from_row,
        )
        .await?;
        let mut returns = grouped(
            self,
            "SELECT * FROM returns ORDER BY order_id, created_at, id",
            return_from_row,
        )
        .await?;
        let mut exchanges = grouped(
            self,
            "SELECT * FROM exchanges ORDER BY order_id, created_at, id",
            exchange_from_row,
        )
        .await?;
        let mut refunds = grouped(
            self,
            "SELECT * FROM refunds ORDER BY order_id, created_at, id",
            refund_from_row,
        )
        .await?;
        let rows = sqlx::query("SELECT * FROM orders ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut o = order_from_row(r)?;
            o.items = items.remove(&o.id).unwrap_or_default();
            o.fulfillments = fulfillments.remove(&o.id).unwrap_or_default();
            o.payments = payments.remove(&o.id).unwrap_or_default();
            o.returns = returns.remove(&o.id).unwrap_or_default();
            o.exchanges = exchanges.remove(&o.id).unwrap_or_default();
            o.refunds = refunds.remove(&o.id).unwrap_or_default();
            out.push(o);
        }
        Ok(out)
    }
}

/// Reads an order's items, fulfilments, payment history, returns, exchanges and refunds into
/// it, on `conn` (a pooled connection, or a transaction that must see its own writes).
pub(super) async fn load_order_lines(
    conn: &mut AnyConnection,
    order: &mut Order,
) -> StoreResult<()> {
    let id = order.id.clone();
    for r in sqlx::query("SELECT * FROM order_items WHERE order_id = $1 ORDER BY position")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.items.push(item_from_row(&r)?);
    }
    for r in sqlx::query("SELECT * FROM fulfillments WHERE order_id = $1 ORDER BY position")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.fulfillments.push(fulfillment_from_row(&r)?);
    }
    for r in sqlx::query("SELECT * FROM payments WHERE order_id = $1 ORDER BY position")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.payments.push(payment_from_row(&r)?);
    }
    for r in sqlx::query("SELECT * FROM returns WHERE order_id = $1 ORDER BY created_at, id")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.returns.push(return_from_row(&r)?);
    }
    for r in sqlx::query("SELECT * FROM exchanges WHERE order_id = $1 ORDER BY created_at, id")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.exchanges.push(exchange_from_row(&r)?);
    }
    for r in sqlx::query("SELECT * FROM refunds WHERE order_id = $1 ORDER BY created_at, id")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
    {
        order.refunds.push(refund_from_row(&r)?);
    }
    Ok(())
}

async fn put_customer(conn: &mut AnyConnection, c: &Customer) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO customers (id, source, first_name, last_name, email, phones, addresses, note, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET source = excluded.source, first_name = excluded.first_name, \
           last_name = excluded.last_name, email = excluded.email, phones = excluded.phones, \
           addresses = excluded.addresses, note = excluded.note, \
           created_at = COALESCE(excluded.created_at, customers.created_at), updated_at = excluded.updated_at",
    )
    .bind(c.id.as_str())
    .bind(c.source.as_str())
    .bind(c.first_name.as_str())
    .bind(c.last_name.as_str())
    .bind(c.primary_email().map(str::to_lowercase))
    .bind(to_json(&c.phones))
    .bind(to_json(&c.addresses))
    .bind(c.note.as_deref())
    .bind(c.created_at)
    .bind(c.updated_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM customer_emails WHERE customer_id = $1")
        .bind(c.id.as_str())
        .execute(&mut *conn)
        .await?;
    for (i, email) in c.emails.iter().enumerate() {
        sqlx::query(
            "INSERT INTO customer_emails (email, customer_id, position) VALUES ($1, $2, $3) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(email.trim().to_lowercase())
        .bind(c.id.as_str())
        .bind(i as i64)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("DELETE FROM payment_methods WHERE customer_id = $1")
        .bind(c.id.as_str())
        .execute(&mut *conn)
        .await?;
    for (i, m) in c.payment_methods.iter().enumerate() {
        sqlx::query(
            "INSERT INTO payment_methods (id, customer_id, position, kind, brand, last_four, balance_minor, currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, position = excluded.position, \
               kind = excluded.kind, brand = excluded.brand, last_four = excluded.last_four, \
               balance_minor = excluded.balance_minor, currency = excluded.currency",
        )
        .bind(m.id.as_str())
        .bind(c.id.as_str())
        .bind(i as i64)
        .bind(m.kind.as_str())
        .bind(m.brand.as_deref())
        .bind(m.last_four.as_deref())
        .bind(m.balance)
        .bind(m.currency.as_str())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn put_product(conn: &mut AnyConnection, p: &Product) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO products (id, source, name, product_type, vendor, description, tags, option_names, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET source = excluded.source, name = excluded.name, \
           product_type = excluded.product_type, vendor = excluded.vendor, description = excluded.description, \
           tags = excluded.tags, option_names = excluded.option_names, \
           created_at = COALESCE(excluded.created_at, products.created_at), updated_at = excluded.updated_at",
    )
    .bind(p.id.as_str())
    .bind(p.source.as_str())
    .bind(p.name.as_str())
    .bind(p.product_type.as_deref())
    .bind(p.vendor.as_deref())
    .bind(p.description.as_deref())
    .bind(to_json(&p.tags))
    .bind(to_json(&p.option_names))
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM variants WHERE product_id = $1")
        .bind(p.id.as_str())
        .execute(&mut *conn)
        .await?;
    for (i, v) in p.variants.iter().enumerate() {
        sqlx::query(
            "INSERT INTO variants (id, product_id, position, title, sku, options, price_minor, currency, available, stock) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET product_id = excluded.product_id, position = excluded.position, \
               title = excluded.title, sku = excluded.sku, options = excluded.options, \
               price_minor = excluded.price_minor, currency = excluded.currency, \
               available = excluded.available, stock = excluded.stock",
        )
        .bind(v.id.as_str())
        .bind(p.id.as_str())
        .bind(i as i64)
        .bind(v.title.as_deref())
        .bind(v.sku.as_deref())
        .bind(to_json(&v.options))
        .bind(v.price)
        .bind(v.currency.as_str())
        .bind(i64::from(v.available))
        .bind(v.stock)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// [`put_order`] for the other store modules.
pub(super) async fn put_order_conn(
    conn: &mut AnyConnection,
    o: &Order,
) -> StoreResult<Option<String>> {
    put_order(conn, o).await
}

/// Writes an order; returns the number it had before when this write renumbered it.
async fn put_order(conn: &mut AnyConnection, o: &Order) -> StoreResult<Option<String>> {
    let previous = sqlx::query("SELECT number FROM orders WHERE id = $1")
        .bind(o.id.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| get_str(&row, "number"))
        .transpose()?
        .filter(|n| *n != o.number);
    let taken = sqlx::query("SELECT id FROM orders WHERE number = $1 AND id <> $2")
        .bind(o.number.as_str())
        .bind(o.id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = taken {
        return Err(StoreError::Conflict(format!(
            "order number {} already belongs to order {}",
            o.number,
            get_str(&row, "id")?
        )));
    }
    sqlx::query(
        "INSERT INTO orders (id, number, source, customer_id, email, status, items_modified, currency, \
           total_minor, shipping_address, cancel_reason, created_at, updated_at, cancelled_at, position, \
           number_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET number = excluded.number, number_key = excluded.number_key, \
           source = excluded.source, \
           customer_id = excluded.customer_id, email = excluded.email, status = excluded.status, \
           items_modified = excluded.items_modified, currency = excluded.currency, \
           total_minor = excluded.total_minor, shipping_address = excluded.shipping_address, \
           cancel_reason = excluded.cancel_reason, \
           created_at = COALESCE(excluded.created_at, orders.created_at), \
           updated_at = excluded.updated_at, cancelled_at = excluded.cancelled_at, \
           position = excluded.position",
    )
    .bind(o.id.as_str())
    .bind(o.number.as_str())
    .bind(o.source.as_str())
    .bind(o.customer_id.as_deref())
    .bind(o.email.as_ref().map(|e| e.trim().to_lowercase()))
    .bind(o.status.as_str())
    .bind(i64::from(o.items_modified))
    .bind(o.currency.as_str())
    .bind(o.total)
    .bind(o.shipping_address.as_ref().map(to_json))
    .bind(o.cancel_reason.as_deref())
    .bind(o.created_at)
    .bind(o.updated_at)
    .bind(o.cancelled_at)
    .bind(o.position)
    .bind(order_number_key(&o.number))
    .execute(&mut *conn)
    .await?;
    for table in [
        "DELETE FROM order_items WHERE order_id = $1",
        "DELETE FROM fulfillments WHERE order_id = $1",
        "DELETE FROM tracking_numbers WHERE order_id = $1",
        "DELETE FROM payments WHERE order_id = $1",
    ] {
        sqlx::query(table)
            .bind(o.id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (i, it) in o.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, position, line_id, variant_id, product_id, name, options, sku, price_minor, quantity) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(o.id.as_str())
        .bind(i as i64)
        .bind(it.line_id.as_deref())
        .bind(it.variant_id.as_str())
        .bind(it.product_id.as_str())
        .bind(it.name.as_str())
        .bind(to_json(&it.options))
        .bind(it.sku.as_deref())
        .bind(it.price)
        .bind(it.quantity)
        .execute(&mut *conn)
        .await?;
    }
    let mut tracking_seen = HashSet::new();
    for (i, f) in o.fulfillments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO fulfillments (order_id, position, id, carrier, status, tracking_numbers, tracking_urls, item_ids, shipped_at, delivered_at, estimated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(o.id.as_str())
        .bind(i as i64)
        .bind(f.id.as_deref())
        .bind(f.carrier.as_deref())
        .bind(f.status.as_deref())
        .bind(to_json(&f.tracking_numbers))
        .bind(to_json(&f.tracking_urls))
        .bind(to_json(&f.item_ids))
        .bind(f.shipped_at)
        .bind(f.delivered_at)
        .bind(f.estimated_at)
        .execute(&mut *conn)
        .await?;
        for t in &f.tracking_numbers {
            if tracking_seen.insert(t.clone()) {
                sqlx::query(
                    "INSERT INTO tracking_numbers (tracking_number, order_id) VALUES ($1, $2)",
                )
                .bind(t.as_str())
                .bind(o.id.as_str())
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    for (i, p) in o.payments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO payments (order_id, position, kind, amount_minor, currency, payment_method_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(o.id.as_str())
        .bind(i as i64)
        .bind(p.kind.as_str())
        .bind(p.amount)
        .bind(o.currency.as_str())
        .bind(p.payment_method_id.as_str())
        .bind(p.created_at)
        .execute(&mut *conn)
        .await?;
    }
    for r in &o.returns {
        put_return(conn, r).await?;
    }
    for x in &o.exchanges {
        put_exchange(conn, x).await?;
    }
    for r in &o.refunds {
        put_refund(conn, r).await?;
    }
    Ok(previous)
}

pub(crate) async fn put_return(conn: &mut AnyConnection, r: &ReturnRequest) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO returns (id, order_id, item_ids, payment_method_id, status, refund_minor, currency, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET item_ids = excluded.item_ids, payment_method_id = excluded.payment_method_id, \
           status = excluded.status, refund_minor = excluded.refund_minor, currency = excluded.currency, \
           created_at = COALESCE(excluded.created_at, returns.created_at)",
    )
    .bind(r.id.as_str())
    .bind(r.order_id.as_str())
    .bind(to_json(&r.item_ids))
    .bind(r.payment_method_id.as_str())
    .bind(r.status.as_str())
    .bind(r.refund)
    .bind(r.currency.as_str())
    .bind(r.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn put_exchange(conn: &mut AnyConnection, x: &ExchangeRequest) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO exchanges (id, order_id, item_ids, new_item_ids, payment_method_id, status, price_diff_minor, currency, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET item_ids = excluded.item_ids, new_item_ids = excluded.new_item_ids, \
           payment_method_id = excluded.payment_method_id, status = excluded.status, \
           price_diff_minor = excluded.price_diff_minor, currency = excluded.currency, \
           created_at = COALESCE(excluded.created_at, exchanges.created_at)",
    )
    .bind(x.id.as_str())
    .bind(x.order_id.as_str())
    .bind(to_json(&x.item_ids))
    .bind(to_json(&x.new_item_ids))
    .bind(x.payment_method_id.as_str())
    .bind(x.status.as_str())
    .bind(x.price_difference)
    .bind(x.currency.as_str())
    .bind(x.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn put_refund(conn: &mut AnyConnection, r: &Refund) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO refunds (id, order_id, amount_minor, currency, payment_method_id, note, line_ids, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET amount_minor = excluded.amount_minor, currency = excluded.currency, \
           payment_method_id = excluded.payment_method_id, note = excluded.note, line_ids = excluded.line_ids, \
           created_at = COALESCE(excluded.created_at, refunds.created_at)",
    )
    .bind(r.id.as_str())
    .bind(r.order_id.as_str())
    .bind(r.amount)
    .bind(r.currency.as_str())
    .bind(r.payment_method_id.as_deref())
    .bind(r.note.as_deref())
    .bind(to_json(&r.line_ids))
    .bind(r.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn corrupt(what: &str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        message: message.into(),
    }
}

pub(super) fn customer_from_row(r: &AnyRow) -> StoreResult<Customer> {
    Ok(Customer {
        id: get_str(r, "id")?,
        source: get_str(r, "source")?,
        first_name: get_str(r, "first_name")?,
        last_name: get_str(r, "last_name")?,
        emails: Vec::new(),
        phones: get_json(r, "phones")?,
        addresses: get_json::<Vec<Address>>(r, "addresses")?,
        payment_methods: Vec::new(),
        note: get_opt_str(r, "note")?,
        created_at: get_opt_i64(r, "created_at")?,
        updated_at: get_opt_i64(r, "updated_at")?,
    })
}

pub(super) fn payment_method_from_row(r: &AnyRow) -> StoreResult<PaymentMethod> {
    Ok(PaymentMethod {
        id: get_str(r, "id")?,
        kind: get_str(r, "kind")?,
        brand: get_opt_str(r, "brand")?,
        last_four: get_opt_str(r, "last_four")?,
        balance: get_opt_i64(r, "balance_minor")?,
        currency: get_str(r, "currency")?,
    })
}

pub(super) fn product_from_row(r: &AnyRow) -> StoreResult<Product> {
    Ok(Product {
        id: get_str(r, "id")?,
        source: get_str(r, "source")?,
        name: get_str(r, "name")?,
        product_type: get_opt_str(r, "product_type")?,
        vendor: get_opt_str(r, "vendor")?,
        description: get_opt_str(r, "description")?,
        tags: get_json(r, "tags")?,
        option_names: get_json(r, "option_names")?,
        variants: Vec::new(),
        created_at: get_opt_i64(r, "created_at")?,
        updated_at: get_opt_i64(r, "updated_at")?,
    })
}

/// A variant's columns (of `variants v`) with `held`: the units reserved for running
/// settlements (reservations `held` and not yet expired at the query's parameter
/// `$time_param`), which [`variant_from_row`] subtracts from tracked stock — so every read of
/// availability counts them.
pub(super) fn variant_columns(time_param: usize) -> String {
    format!(
        "v.*, CAST(COALESCE((SELECT SUM(r.quantity) FROM stock_reservations r \
         WHERE r.variant_id = v.id AND r.status = 'held' AND r.expires_at > ${time_param}), 0) \
         AS BIGINT) AS held"
    )
}

pub(super) fn variant_from_row(r: &AnyRow) -> StoreResult<Variant> {
    // Rows read without the `held` column (none reserved) count nothing.
    let held = r.try_get::<i64, _>("held").unwrap_or(0);
    Ok(Variant {
        id: get_str(r, "id")?,
        product_id: get_str(r, "product_id")?,
        title: get_opt_str(r, "title")?,
        sku: get_opt_str(r, "sku")?,
        options: get_json::<Map<String, Value>>(r, "options")?,
        price: get_i64(r, "price_minor")?,
        currency: get_str(r, "currency")?,
        available: get_i64(r, "available")? != 0,
        stock: get_opt_i64(r, "stock")?.map(|s| s - held),
    })
}

pub(super) fn order_from_row(r: &AnyRow) -> StoreResult<Order> {
    let status_text = get_str(r, "status")?;
    let status = OrderStatus::parse(&status_text)
        .ok_or_else(|| corrupt("order status", format!("unknown status {status_text:?}")))?;
    Ok(Order {
        id: get_str(r, "id")?,
        number: get_str(r, "number")?,
        source: get_str(r, "source")?,
        customer_id: get_opt_str(r, "customer_id")?,
        email: get_opt_str(r, "email")?,
        status,
        items_modified: get_i64(r, "items_modified")? != 0,
        currency: get_str(r, "currency")?,
        items: Vec::new(),
        shipping_address: get_opt_json(r, "shipping_address")?,
        fulfillments: Vec::new(),
        payments: Vec::new(),
        total: get_i64(r, "total_minor")?,
        cancel_reason: get_opt_str(r, "cancel_reason")?,
        created_at: get_opt_i64(r, "created_at")?,
        updated_at: get_opt_i64(r, "updated_at")?,
        cancelled_at: get_opt_i64(r, "cancelled_at")?,
        position: get_i64(r, "position")?,
        returns: Vec::new(),
        exchanges: Vec::new(),
        refunds: Vec::new(),
    })
}

pub(super) fn item_from_row(r: &AnyRow) -> StoreResult<OrderItem> {
    Ok(OrderItem {
        line_id: get_opt_str(r, "line_id")?,
        variant_id: get_str(r, "variant_id")?,
        product_id: get_str(r, "product_id")?,
        name: get_str(r, "name")?,
        options: get_json(r, "options")?,
        sku: get_opt_str(r, "sku")?,
        price: get_i64(r, "price_minor")?,
        quantity: get_i64(r, "quantity")?,
    })
}

pub(super) fn fulfillment_from_row(r: &AnyRow) -> StoreResult<Fulfillment> {
    Ok(Fulfillment {
        id: get_opt_str(r, "id")?,
        carrier: get_opt_str(r, "carrier")?,
        status: get_opt_str(r, "status")?,
        tracking_numbers: get_json(r, "tracking_numbers")?,
        tracking_urls: get_json(r, "tracking_urls")?,
        item_ids: get_json(r, "item_ids")?,
        shipped_at: get_opt_i64(r, "shipped_at")?,
        delivered_at: get_opt_i64(r, "delivered_at")?,
        estimated_at: get_opt_i64(r, "estimated_at")?,
    })
}

pub(super) fn payment_from_row(r: &AnyRow) -> StoreResult<PaymentEntry> {
    let kind_text = get_str(r, "kind")?;
    Ok(PaymentEntry {
        kind: PaymentKind::parse(&kind_text)
            .ok_or_else(|| corrupt("payment kind", format!("unknown kind {kind_text:?}")))?,
        amount: get_i64(r, "amount_minor")?,
        payment_method_id: get_str(r, "payment_method_id")?,
        created_at: get_opt_i64(r, "created_at")?,
    })
}

pub(super) fn return_from_row(r: &AnyRow) -> StoreResult<ReturnRequest> {
    Ok(ReturnRequest {
        id: get_str(r, "id")?,
        order_id: get_str(r, "order_id")?,
        item_ids: get_json(r, "item_ids")?,
        payment_method_id: get_str(r, "payment_method_id")?,
        status: get_str(r, "status")?,
        refund: get_i64(r, "refund_minor")?,
        currency: get_str(r, "currency")?,
        created_at: get_opt_i64(r, "created_at")?,
    })
}

pub(super) fn exchange_from_row(r: &AnyRow) -> StoreResult<ExchangeRequest> {
    Ok(ExchangeRequest {
        id: get_str(r, "id")?,
        order_id: get_str(r, "order_id")?,
        item_ids: get_json(r, "item_ids")?,
        new_item_ids: get_json(r, "new_item_ids")?,
        payment_method_id: get_str(r, "payment_method_id")?,
        status: get_str(r, "status")?,
        price_difference: get_i64(r, "price_diff_minor")?,
        currency: get_str(r, "currency")?,
        created_at: get_opt_i64(r, "created_at")?,
    })
}

pub(super) fn refund_from_row(r: &AnyRow) -> StoreResult<Refund> {
    Ok(Refund {
        id: get_str(r, "id")?,
        order_id: get_str(r, "order_id")?,
        amount: get_i64(r, "amount_minor")?,
        currency: get_str(r, "currency")?,
        payment_method_id: get_opt_str(r, "payment_method_id")?,
        note: get_opt_str(r, "note")?,
        line_ids: get_json(r, "line_ids")?,
        created_at: get_opt_i64(r, "created_at")?,
    })
}

/// The indexed form of an order number, as shoppers type it: "#W2611340", "W2611340" and
/// "w2611340" are one order.
pub(crate) fn order_number_key(number: &str) -> String {
    let n = number.trim();
    let n = n.strip_prefix('#').unwrap_or(n);
    format!("#{}", n.to_uppercase())
}
