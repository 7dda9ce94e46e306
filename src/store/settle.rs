//! What settling a deal (`crate::settle`) needs from the store beyond its own tables: writing
//! and removing an order inside the caller's write transaction, and committing that transaction
//! with the change-feed rows that make every read model (and every instance) forget the orders
//! and products it touched. No business rules: the saga decides what is written.

use sqlx::Row;

use super::changes::Change;
use super::{Store, StoreResult, WriteTx};
use crate::commerce::Order;

/// The rows a write transaction touched, for [`Store::commit_touching`].
#[derive(Debug, Clone, Default)]
pub struct Touched {
    /// Numbers of orders written.
    pub orders: Vec<String>,
    /// Numbers of orders removed.
    pub orders_gone: Vec<String>,
    /// Ids of products whose stock or reservations changed.
    pub products: Vec<String>,
}

impl Store {
    /// Writes an order (insert or replace, with its lines and payment history) in `tx`.
    pub async fn put_order_in(&self, tx: &mut WriteTx, order: &Order) -> StoreResult<()> {
        super::commerce::put_order_conn(tx, order).await?;
        Ok(())
    }

    /// Reads an order, complete, inside `tx` (seeing the transaction's own writes).
    pub async fn get_order_in(&self, tx: &mut WriteTx, id: &str) -> StoreResult<Option<Order>> {
        let row = sqlx::query("SELECT * FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut order = super::commerce::order_from_row(&row)?;
        super::commerce::load_order_lines(tx, &mut order).await?;
        Ok(Some(order))
    }

    /// Removes an order and everything hung on it in `tx`; its number, or None when there was
    /// no such order.
    pub async fn delete_order_in(&self, tx: &mut WriteTx, id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("DELETE FROM orders WHERE id = $1 RETURNING number")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>("number")).transpose()?)
    }

    /// Commits `tx` with the change-feed rows for what it touched, then has this instance's
    /// read models forget those rows.
    pub async fn commit_touching(&self, tx: WriteTx, touched: &Touched) -> StoreResult<()> {
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(touched.orders.iter().cloned().map(Change::Order));
        changes.extend(touched.orders_gone.iter().cloned().map(Change::OrderGone));
        changes.extend(touched.products.iter().cloned().map(Change::Product));
        self.commit_changes(tx, &changes).await
    }
}
