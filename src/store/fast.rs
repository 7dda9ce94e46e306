//! Fast paths for the hottest reads. An order's lines (items, fulfilments, payments, returns,
//! exchanges, refunds) in one round trip instead of six: one `UNION ALL` over the six tables
//! with every column they have (NULL where a table lacks it, cast so PostgreSQL can type the
//! union), tagged with the table it came from and ordered as the six separate reads order them.
//! Each row is then read by the same row readers as [`super::commerce`]'s.

use sqlx::{AnyConnection, Row};

use super::commerce::{
    exchange_from_row, fulfillment_from_row, item_from_row, payment_from_row, refund_from_row,
    return_from_row,
};
use super::{StoreError, StoreResult};
use crate::commerce::Order;

/// `(table tag, the table's own columns)`; every other column of [`COLUMNS`] is NULL.
const TABLES: [(i64, &str, &[&str]); 6] = [
    (
        1,
        "order_items",
        &[
            "position",
            "line_id",
            "variant_id",
            "product_id",
            "name",
            "options",
            "sku",
            "price_minor",
            "quantity",
        ],
    ),
    (
        2,
        "fulfillments",
        &[
            "position",
            "id",
            "carrier",
            "status",
            "tracking_numbers",
            "tracking_urls",
            "item_ids",
            "shipped_at",
            "delivered_at",
            "estimated_at",
        ],
    ),
    (
        3,
        "payments",
        &[
            "position",
            "kind",
            "amount_minor",
            "currency",
            "payment_method_id",
            "created_at",
        ],
    ),
    (
        4,
        "returns",
        &[
            "id",
            "item_ids",
            "payment_method_id",
            "status",
            "refund_minor",
            "currency",
            "created_at",
        ],
    ),
    (
        5,
        "exchanges",
        &[
            "id",
            "item_ids",
            "new_item_ids",
            "payment_method_id",
            "status",
            "price_diff_minor",
            "currency",
            "created_at",
        ],
    ),
    (
        6,
        "refunds",
        &[
            "id",
            "amount_minor",
            "currency",
            "payment_method_id",
            "note",
            "line_ids",
            "created_at",
        ],
    ),
];

/// Every column of the union with its SQL type.
const COLUMNS: [(&str, &str); 28] = [
    ("position", "BIGINT"),
    ("line_id", "TEXT"),
    ("variant_id", "TEXT"),
    ("product_id", "TEXT"),
    ("name", "TEXT"),
    ("options", "TEXT"),
    ("sku", "TEXT"),
    ("price_minor", "BIGINT"),
    ("quantity", "BIGINT"),
    ("id", "TEXT"),
    ("carrier", "TEXT"),
    ("status", "TEXT"),
    ("tracking_numbers", "TEXT"),
    ("tracking_urls", "TEXT"),
    ("item_ids", "TEXT"),
    ("shipped_at", "BIGINT"),
    ("delivered_at", "BIGINT"),
    ("estimated_at", "BIGINT"),
    ("kind", "TEXT"),
    ("amount_minor", "BIGINT"),
    ("currency", "TEXT"),
    ("payment_method_id", "TEXT"),
    ("created_at", "BIGINT"),
    ("refund_minor", "BIGINT"),
    ("new_item_ids", "TEXT"),
    ("price_diff_minor", "BIGINT"),
    ("note", "TEXT"),
    ("line_ids", "TEXT"),
];

fn union_sql() -> String {
    let branches: Vec<String> = TABLES
        .iter()
        .map(|(tag, table, own)| {
            let cols: Vec<String> = COLUMNS
                .iter()
                .map(|(c, ty)| {
                    if own.contains(c) {
                        c.to_string()
                    } else {
                        format!("CAST(NULL AS {ty}) AS {c}")
                    }
                })
                .collect();
            format!(
                "SELECT CAST({tag} AS BIGINT) AS row_table, order_id, {} FROM {table} WHERE order_id = $1",
                cols.join(", ")
            )
        })
        .collect();
    format!(
        "{} ORDER BY row_table, position, created_at, id",
        branches.join(" UNION ALL ")
    )
}

/// Fills `order`'s lines with one query.
pub(super) async fn load_order_lines(
    conn: &mut AnyConnection,
    order: &mut Order,
) -> StoreResult<()> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(union_sql).as_str();
    // Built once from the constants above; the order id is bound.
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order.id.as_str())
        .fetch_all(&mut *conn)
        .await?;
    for r in &rows {
        match r.try_get::<i64, _>("row_table")? {
            1 => order.items.push(item_from_row(r)?),
            2 => order.fulfillments.push(fulfillment_from_row(r)?),
            3 => order.payments.push(payment_from_row(r)?),
            4 => order.returns.push(return_from_row(r)?),
            5 => order.exchanges.push(exchange_from_row(r)?),
            6 => order.refunds.push(refund_from_row(r)?),
            other => {
                return Err(StoreError::Corrupt {
                    what: "order lines".into(),
                    message: format!("unknown table tag {other}"),
                });
            }
        }
    }
    Ok(())
}
